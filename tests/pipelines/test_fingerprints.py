"""Fingerprints are content identities: a codebook is its bytes' sha256, never the path it was
named by nor the directory a job was started from; a refresh from anywhere that changes
nothing writes nothing."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from audio_fixtures import synth_speechlike, write_audio
from audiotok.pipelines import cli
from audiotok.pipelines import tokenize as job
from audiotok.transforms import lm
from audiotok.transforms.tokenizers import kmeans, registry


def write_codebook(path: Path, k: int = 8) -> Path:
    """A codebook for ``mfcc-kmeans[k=K]`` (random centroids: identity, not quality, is tested)."""
    tok = registry.create(f"mfcc-kmeans[k={k}]")
    rng = np.random.default_rng(0)
    book = kmeans.Codebook(rng.standard_normal((k, tok.feature_dim)).astype(np.float32) * 10,
                           {"tokenizer": tok.name, "features": tok.feature_fingerprint()})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(book.to_bytes())
    return path


def sha_tree(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file()}


def test_a_codebook_named_four_ways_has_one_fingerprint(tmp_path, monkeypatch):
    book = write_codebook(tmp_path / "books" / "km8.safetensors")
    monkeypatch.chdir(tmp_path)
    names = ["books/km8.safetensors", "./books/../books/km8.safetensors", str(book), f"file://{book}"]
    toks = [registry.create(f"mfcc-kmeans[k=8,codebook={name}]") for name in names]
    assert len({t.fingerprint() for t in toks}) == 1
    assert toks[0].weights_identity() == f"codebook-sha256:{hashlib.sha256(book.read_bytes()).hexdigest()}"
    vocabs = {lm.build_vocab(job.stream_descriptions([t])).fingerprint() for t in toks}
    assert len(vocabs) == 1
    # Another codebook (one bit of a centroid changed) is another fingerprint.
    data = bytearray(book.read_bytes())
    data[-1] ^= 1
    (tmp_path / "books" / "other.safetensors").write_bytes(bytes(data))
    assert registry.create("mfcc-kmeans[k=8,codebook=books/other.safetensors]").fingerprint() != toks[0].fingerprint()


def test_a_checkpoint_named_two_ways_has_one_fingerprint(tmp_path, monkeypatch):
    import tiny_models

    folder = tiny_models.save_encodec(tmp_path / "ckpt" / "encodec")
    monkeypatch.chdir(tmp_path / "ckpt")
    a = registry.create("encodec-24k[model=./encodec]")
    monkeypatch.chdir(tmp_path)
    b = registry.create(f"encodec-24k[model={folder}]")
    c = registry.create(f"encodec-24k[model=file://{folder},sha256={a.weights_identity().split(':')[1]}]")
    assert a.fingerprint() == b.fingerprint() == c.fingerprint()


def tokenize(*args: str) -> int:
    return cli.main(["tokenize", *args, "--segment-s", "1", "--min-segment-s", "0.2", "--kmeans-max-frames", "2000"])


def make_project(root: Path) -> None:
    for i, rate in enumerate((16000, 44100)):
        write_audio(root / "in" / f"f{i}.wav", synth_speechlike(1.5, rate, seed=i), rate, "wav")


def test_an_outside_codebook_is_named_by_its_absolute_url_and_a_refresh_from_anywhere_writes_nothing(
        tmp_path, monkeypatch):
    project = tmp_path / "project"
    make_project(project)
    book = write_codebook(project / "books" / "km8.safetensors")
    monkeypatch.chdir(project)
    assert tokenize("--input", "in/*", "--output", "out",
                    "--tokenizer", "logmel[n_mels=8],mfcc-kmeans[k=8,codebook=books/km8.safetensors]") == 0
    out = project / "out"
    index = json.loads((out / "index.json").read_text())
    (described,) = [t for t in index["tokenizers"] if t["tokenizer"] == "mfcc-kmeans"]
    assert described["config"]["codebook"] == f"file://{book}"
    before = sha_tree(out)
    # Absolute paths, from another directory.
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert tokenize("--input", f"{project}/in/*", "--output", str(out), "--incremental",
                    "--tokenizer", f"logmel[n_mels=8],mfcc-kmeans[k=8,codebook={book}]") == 0
    assert sha_tree(out) == before
    # Relative paths, from there.
    assert tokenize("--input", "../project/in/*", "--output", "../project/out", "--incremental",
                    "--tokenizer", "logmel[n_mels=8],mfcc-kmeans[k=8,codebook=../project/books/km8.safetensors]") == 0
    assert sha_tree(out) == before


def test_a_codebook_inside_the_dataset_is_named_relative_to_its_root(tmp_path, monkeypatch):
    project = tmp_path / "project"
    make_project(project)
    monkeypatch.chdir(project)
    assert tokenize("--input", "in/*", "--output", "out", "--tokenizer", "mfcc-kmeans[k=8]") == 0  # fitted here
    out = project / "out"
    index = json.loads((out / "index.json").read_text())
    assert index["tokenizers"][0]["config"]["codebook"] == "codebooks/mfcc-kmeans-k8.safetensors"
    before = sha_tree(out)
    monkeypatch.chdir(tmp_path)
    # The dataset's own codebook, found by the refresh, and the same file named explicitly.
    assert tokenize("--input", "project/in/*", "--output", "project/out", "--incremental",
                    "--tokenizer", "mfcc-kmeans[k=8]") == 0
    assert sha_tree(out) == before
    assert tokenize("--input", f"{project}/in/*", "--output", f"{out}", "--incremental",
                    "--tokenizer", f"mfcc-kmeans[k=8,codebook={out}/codebooks/mfcc-kmeans-k8.safetensors]") == 0
    assert sha_tree(out) == before


def test_inputs_have_one_uri_from_any_directory(tmp_path, monkeypatch):
    """A listed file's URI (and so its sample keys) is the same from any working directory:
    ``..`` in a pattern used to survive into the URI, where the hidden-file exclusion (``*/.*``)
    then matched it and dropped every file."""
    from audiotok.transforms import match, storage

    write_audio(tmp_path / "data" / "a.wav", synth_speechlike(0.5, 16000, seed=0), 16000, "wav")
    (tmp_path / "data" / "m.jsonl").write_text('{"uri": "a.wav"}\n')
    (tmp_path / "elsewhere").mkdir()
    expected = str(tmp_path / "data" / "a.wav")
    for cwd, pattern, manifest in ((tmp_path, "data/*.wav", "data/m.jsonl"),
                                   (tmp_path / "elsewhere", "../data/*.wav", "../data/m.jsonl"),
                                   (tmp_path / "data", "*.wav", "m.jsonl")):
        monkeypatch.chdir(cwd)
        config = match.MatchConfig(patterns=(pattern,), manifests=(manifest,))
        assert config.manifests == (str(tmp_path / "data" / "m.jsonl"),)
        found, work = match.split_pattern(config.patterns[0])
        listed = found + [f for w in work for f in match.list_prefixes(w)]
        assert [url for url, _ in listed if not match.is_excluded(url, config.exclude)] == [expected]
        assert match.parse_manifest_line('{"uri": "a.wav"}', manifest, 1).uri == expected
    assert [url for url, _ in storage.list_files(f"file://{tmp_path}/data/*.wav")] == [f"file://{expected}"]


def test_a_checkpoint_folder_is_named_by_its_absolute_url_and_decodes_from_anywhere(tmp_path, monkeypatch):
    import tiny_models
    from audiotok.pipelines import decode_codes

    project = tmp_path / "project"
    make_project(project)
    folder = tiny_models.save_encodec(project / "models" / "encodec")
    monkeypatch.chdir(project)
    assert tokenize("--input", "in/*", "--output", "out", "--tokenizer", "encodec-24k[model=models/encodec]") == 0
    index = json.loads((project / "out" / "index.json").read_text())
    assert index["tokenizers"][0]["config"]["model"] == f"file://{folder}"
    from audiotok.transforms import dataset

    shard = project / "out" / next(dataset.shard_rows(str(project / "out"), index))["url"]
    key = next(name.split(".")[0] for name in __import__("tarfile").open(shard).getnames())
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    audio, rate = decode_codes.decode_sample(str(shard), key, index_url=str(project / "out" / "index.json"))
    assert rate == 24000 and audio.size > 0
