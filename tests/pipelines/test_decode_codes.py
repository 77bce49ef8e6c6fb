"""``audiotok decode SHARD KEY -o out.wav``: codes of one sample back to audio."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
soundfile = pytest.importorskip("soundfile")

import tiny_models  # noqa: E402
from audio_fixtures import synth_speechlike  # noqa: E402

from audiotok.pipelines import decode_codes  # noqa: E402
from audiotok.transforms import dataset as layout  # noqa: E402
from audiotok.transforms.records import AudioRef, Segment  # noqa: E402
from audiotok.transforms.tokenize import tokenize_batch  # noqa: E402
from audiotok.transforms.tokenizers import registry  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A one-shard dataset laid out as ``audiotok tokenize`` writes it: encodec-24k + logmel."""
    root = tmp_path_factory.mktemp("decode")
    model = tiny_models.save_encodec(root / "encodec")
    specs = f"encodec-24k[model={model}],logmel"
    tokenizers = registry.create_all(specs)
    for t in tokenizers:
        t.load()
    segments = [Segment(key=f"clip_{i:04d}-000000", source=AudioRef(f"/audio/clip_{i}.wav"), start_s=0.0, end_s=s,
                        sample_rate=24000, audio=synth_speechlike(s, 24000, seed=i)[0])
                for i, s in enumerate((1.3, 0.7))]
    out = root / "out"
    (out / layout.SHARDS_DIR).mkdir(parents=True)
    shard = out / layout.SHARDS_DIR / "shard-000000.tar"
    with tarfile.open(shard, "w") as tar:
        for sample in tokenize_batch(tokenizers, segments):
            for name, data in layout.encode_sample(sample):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    (out / layout.INDEX_NAME).write_text(json.dumps({"tokenizers": [t.describe() for t in tokenizers]}))
    return {"shard": str(shard), "model": model, "out": out, "segments": segments, "root": root}


def test_decode_writes_the_segment_as_wav(dataset, tmp_path):
    wav = tmp_path / "clip.wav"
    assert decode_codes.main([dataset["shard"], "clip_0000-000000", "-o", str(wav)]) == 0
    audio, rate = soundfile.read(wav, dtype="float32")
    assert rate == 24000 and audio.shape == (len(dataset["segments"][0].audio),)
    assert np.abs(audio).max() > 0


def test_the_cli_knows_decode(dataset, tmp_path):
    from audiotok.pipelines import cli

    wav = tmp_path / "clip.wav"
    assert cli.main(["decode", dataset["shard"], "clip_0001-000000", "-o", str(wav)]) == 0
    assert soundfile.info(str(wav)).frames == len(dataset["segments"][1].audio)


def test_without_the_index_a_full_spec_rebuilds_the_codec(dataset, tmp_path):
    audio, rate = decode_codes.decode_sample(dataset["shard"], "clip_0001-000000",
                                             f"encodec-24k[model={dataset['model']}]", index_url=str(tmp_path / "none"))
    assert rate == 24000 and audio.shape == (1, len(dataset["segments"][1].audio))


def test_other_weights_are_refused(dataset, tmp_path):
    other = tiny_models.save_encodec(tmp_path / "other", seed=3)
    with pytest.raises(decode_codes.DecodeError, match="codes were made with weights sha256:"):
        decode_codes.decode_sample(dataset["shard"], "clip_0000-000000", f"encodec-24k[model={other}]")


def test_clear_errors(dataset, tmp_path, capsys):
    assert decode_codes.main([dataset["shard"], "absent-000000", "-o", str(tmp_path / "x.wav")]) == 1
    assert "no sample 'absent-000000'" in capsys.readouterr().err
    with pytest.raises(decode_codes.DecodeError, match="no 'mimi' streams"):
        decode_codes.decode_sample(dataset["shard"], "clip_0000-000000", "mimi")
    meta, _ = decode_codes.read_sample(dataset["shard"], "clip_0000-000000")
    logmel_only = {"streams": {k: v for k, v in meta["streams"].items() if k == "logmel"}}
    with pytest.raises(decode_codes.DecodeError, match="only codec tokens turn back into audio"):
        decode_codes.tokenizer_for(logmel_only, None, None, "here")
    with pytest.raises(decode_codes.DecodeError, match="index"):
        decode_codes.tokenizer_for(meta, None, None, "here")
