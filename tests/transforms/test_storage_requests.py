"""Storage requests per input, counted by the S3 emulator: a file decoded whole is read once
(its header probe and its decode share one open), a long file costs its plan and one open per
stretch, a failed file its one open. The counts are the README's ("Reading from object
stores"); this test keeps the two equal, so they cannot grow unnoticed."""

from __future__ import annotations

import collections
import json
import re
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from audio_fixtures import encode_audio, synth_speechlike
from emulators import MotoS3, apply_env
from audiotok.transforms import isolation, segment
from audiotok.transforms.decode import DecodeConfig, Plan
from audiotok.transforms.records import AudioRef
from audiotok.transforms.segment import SegmentConfig

README = Path(__file__).resolve().parents[2] / "README.md"
TABLE = "<!-- storage-requests: tests/transforms/test_storage_requests.py -->"


def _inputs() -> dict[str, bytes]:
    """The README's rows: name -> the file's bytes."""
    minute = synth_speechlike(60.0, 16000, seed=1)
    return {
        "short.wav": encode_audio(minute[:, : 3 * 16000], 16000, "wav"),
        "short-5min.wav": encode_audio(np.tile(minute, 5), 16000, "wav"),
        "long-12min.flac": encode_audio(np.tile(minute, 12), 16000, "flac"),
        "long-12min.mp3": encode_audio(np.tile(minute, 12), 16000, "mp3"),
        "noise.wav": np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes(),
    }


def documented() -> dict[str, tuple[int, int]]:
    """README's table: file name -> (HEAD, GET) requests."""
    text = README.read_text(encoding="utf-8")
    table = text[text.index(TABLE):].split("\n\n", 1)[0]
    rows = {}
    for line in table.splitlines():
        found = re.match(r"\| `([^`]+)` .*\| (\d+) \| (\d+) \|$", line)
        if found:
            rows[found.group(1)] = (int(found.group(2)), int(found.group(3)))
    return rows


@pytest.mark.slow
def test_requests_per_input_are_what_the_readme_says(tmp_path, monkeypatch):
    recording = tmp_path / "requests.jsonl"
    monkeypatch.setenv("MOTO_RECORDER_FILEPATH", str(recording))  # the server writes each request there
    inputs = _inputs()
    with MotoS3() as s3, apply_env(s3.env):
        s3.make_bucket("corpus")
        from audiotok.transforms import storage

        for name, data in inputs.items():
            storage.write_bytes(f"s3://corpus/{name}", data)
        urllib.request.urlopen(urllib.request.Request(s3.url + "/moto-api/recorder/start-recording",
                                                      method="POST"), timeout=10).read()
        config = SegmentConfig()  # the job's defaults: files over 600 s are planned
        decoder = isolation.ProcessDecoder(DecodeConfig(), config.split_config())
        outcome = {}
        try:
            for name in inputs:
                ref = AudioRef(f"s3://corpus/{name}")
                try:
                    opened = decoder.open(ref)
                except Exception as e:  # noqa: BLE001 - a failed file is one of the rows
                    outcome[name] = getattr(e, "reason", type(e).__name__)
                    continue
                if isinstance(opened, Plan):
                    items = segment.work_items(ref, opened)
                    for item in items:
                        for _ in decoder.stretch(item, config.chunk_s):
                            pass
                    outcome[name] = f"{len(items)} stretches"
                else:
                    outcome[name] = "whole"
        finally:
            decoder.close()
    assert outcome == {"short.wav": "whole", "short-5min.wav": "whole", "long-12min.flac": "2 stretches",
                       "long-12min.mp3": "2 stretches", "noise.wav": "unsupported_format"}
    counts = collections.defaultdict(collections.Counter)
    for line in recording.read_text().splitlines():
        request = json.loads(line)
        name = request["url"].rsplit("/", 1)[-1].split("?")[0]
        if name in inputs:
            counts[name][request["method"]] += 1
    measured = {name: (counts[name]["HEAD"], counts[name]["GET"]) for name in inputs}
    assert sum(sum(c.values()) for c in counts.values()) == sum(h + g for h, g in measured.values())
    assert measured == documented()
