"""Faults injected at every point of the decode route, through the real tokenize job, on the
in-process runner and on the multi-process one: a decoder that segfaults or hangs while it
probes a header, plans a long file, decodes a file whole or decodes a stretch costs one
dead-letter record for that file (or that stretch), the worker goes on, and nothing is retried."""

from __future__ import annotations

import collections
import json
import os
from pathlib import Path

import pytest

from audio_fixtures import synth_speechlike, write_audio
from audiotok.runners import profiles
from audiotok.transforms import dataset
from audiotok.transforms.decode import DecodeConfig
from audiotok.transforms.match import MatchConfig
from audiotok.transforms.segment import SegmentConfig
from audiotok.transforms.tokenize import TokenizeConfig

TESTS = Path(__file__).resolve().parents[1]
TIMEOUT_S = 1.5
SPLIT_S = 20.0
RATE = 16000
# name -> (seconds, format); KIND-at-POINT names get that fault (hostile_corpus.FaultPoints).
FILES = {
    "good.wav": (3.0, "wav"),
    "long.flac": (35.0, "flac"),
    "segfault-at-probe.wav": (3.0, "wav"),
    "segfault-at-plan.flac": (35.0, "flac"),
    "segfault-at-whole.wav": (3.0, "wav"),
    "segfault-at-chunk.flac": (35.0, "flac"),
    "hang-at-probe.flac": (35.0, "flac"),
    "hang-at-chunk.flac": (35.0, "flac"),
}
# 35 s with --split-s 20 and 4 s windows: two stretches, [0, 20 s) and [20 s, end).
EXPECTED_FAILURES = sorted([
    ("segfault-at-probe.wav", "decoder_crash", None),
    ("segfault-at-plan.flac", "decoder_crash", None),
    ("segfault-at-whole.wav", "decoder_crash", None),
    ("segfault-at-chunk.flac", "decoder_crash", SPLIT_S),
    ("hang-at-probe.flac", "timeout", None),
    ("hang-at-chunk.flac", "timeout", SPLIT_S),
])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults") / "in"
    root.mkdir()
    for i, (name, (seconds, fmt)) in enumerate(sorted(FILES.items())):
        write_audio(root / name, synth_speechlike(seconds, RATE, seed=i), RATE, fmt)
    return root


def _run(corpus: Path, out: Path, profile: str, monkeypatch) -> tuple[list[dict], dict, list[str]]:
    from audiotok.pipelines import tokenize as job

    calls = out.parent / f"{out.name}-calls.log"
    monkeypatch.setenv("AUDIOTOK_TEST_CALL_LOG", str(calls))
    # Worker processes of the multi-process runner import the fault decoder from tests/.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    config = job.JobConfig(
        output=str(out), match=MatchConfig(patterns=(f"{corpus}/*",)),
        decode=DecodeConfig(timeout_s=TIMEOUT_S, decoder="hostile_corpus:FaultPoints"),
        segment=SegmentConfig(segment_s=4.0, min_segment_s=1.0, split_s=SPLIT_S, chunk_s=5.0),
        tokenize=TokenizeConfig(specs="logmel", torch_threads=1), overwrite=True, max_failure_fraction=1.0)
    index, counters, _ = job.run(config, profiles.pipeline_options(profile, []))
    failures = []
    for row in dataset.failure_rows(str(out), index):
        failures += [json.loads(line) for line in (out / row["url"]).read_text("utf-8").splitlines()]
    return failures, index, calls.read_text().splitlines()


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("profile", ["direct", "direct-multiprocess"])
def test_a_fault_anywhere_in_the_route_costs_one_record_and_no_retry(corpus, tmp_path, monkeypatch, profile):
    failures, index, calls = _run(corpus, tmp_path / "out", profile, monkeypatch)
    got = sorted((os.path.basename(f["uri"]), f["reason"], f.get("start_s")) for f in failures)
    assert got == EXPECTED_FAILURES
    assert all(f["stage"] == "decode" for f in failures)
    # Everything else came out: the good files whole, the first stretch of each chunk-fault file.
    sources = collections.Counter()
    for shard in dataset.shard_rows(str(tmp_path / "out"), index):
        for meta in _metas(tmp_path / "out" / shard["url"]):
            sources[os.path.basename(meta["source"]["uri"])] += 1
    assert sources == {"good.wav": 1, "long.flac": 9, "segfault-at-chunk.flac": 5, "hang-at-chunk.flac": 5}
    # No retry: each file was probed once, each stretch of the long files started once.
    seen = collections.Counter(calls)
    assert {name: seen[f"probe {name}"] for name in FILES} == {name: 1 for name in FILES}
    for name in ("long.flac", "segfault-at-chunk.flac", "hang-at-chunk.flac"):
        assert seen[f"plan {name}"] == 1 and seen[f"chunk {name}"] == 2, name


def _metas(shard: Path):
    import tarfile

    with tarfile.open(shard) as tar:
        for member in tar:
            if member.name.endswith(".json"):
                yield json.load(tar.extractfile(member))
