"""A corpus of hostile and broken audio, generated (nothing binary is checked in).

Every case says what must become of it: ``ok`` (samples in the shards) or the reason code
of its dead-letter record, and the stage that writes it::

    cases = hostile_cases()                      # list[Case], bytes in memory
    written = write_corpus(tmp_path / "in")      # the files on disk (and a manifest)
    python tests/hostile_corpus.py --out DIR     # the same corpus, for a manual run
    python tests/hostile_corpus.py --run OUT     # it, through the real pipeline; JSON report

Decoders for fault injection (``DecodeConfig.decoder``), each a ``FileDecoder`` whose hooks
misbehave on marked files and decode everything else for real:

* ``FaultyDecoder`` crashes the process (SIGSEGV through ctypes, as a native decoder bug would)
  when it probes a file that starts with ``CRASH_MAGIC`` and hangs on ``HANG_MAGIC``;
* ``FaultKinds``: a file whose first line names a fault (``segfault``, ``abort``, ``exit``,
  ``hang``, ``bug``, ``memory``, ``reason``) gets it where the file is decoded whole;
* ``FaultPoints``: a file named ``KIND-at-POINT.*`` (KIND ``segfault`` or ``hang``; POINT
  ``probe``, ``plan``, ``whole`` or ``chunk``) gets it at that point of the decode route
  (``chunk``: the first chunk of every stretch but the file's first). With ``AUDIOTOK_TEST_CALL_LOG`` set, every hook call
  appends ``POINT NAME`` to that file (to count retries).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import struct
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: the repo and tests/ on the path, as under pytest
    sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from audio_fixtures import encode_audio, synth_speechlike  # noqa: E402
from audiotok.transforms.decode import FileDecoder  # noqa: E402

CRASH_MAGIC = b"AUDIOTOK-TEST:CRASH"
HANG_MAGIC = b"AUDIOTOK-TEST:HANG"
LONG_HOURS = 5.0  # the sparse WAV over the default 4 h limit
LONG_OK_S = 600.0  # a real (not sparse) 10-minute file that must go through


@dataclasses.dataclass(frozen=True)
class Case:
    """One input of the corpus.

    Attributes:
        name: path under the corpus root (bytes: names need not be UTF-8).
        data: the file's content (empty for ``sparse_bytes`` files).
        expect: ``ok``, or the reason code of its dead-letter record.
        stage: the stage that writes the record (``match``, ``decode``, ``segment``).
        sparse_bytes: for huge files: total size, written as a header plus a hole.
        needs_faults: only meaningful with ``FaultyDecoder``.
    """

    name: bytes
    data: bytes
    expect: str
    stage: str = "decode"
    sparse_bytes: int = 0
    needs_faults: bool = False

    @property
    def label(self) -> str:
        return self.name.decode("utf-8", "backslashreplace")


# ------------------------------------------------------------------ building blocks


def wav_header(rate: int, channels: int, bits: int, data_bytes: int, codec: int = 1,
               riff: bytes = b"RIFF") -> bytes:
    """A 44-byte canonical WAV header whose ``data`` chunk declares ``data_bytes``."""
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", codec, channels, rate & 0xFFFFFFFF, (rate * block) & 0xFFFFFFFF, block, bits)
    return (riff + struct.pack("<I", min(0xFFFFFFFF, 36 + data_bytes)) + b"WAVE" + b"fmt "
            + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", min(0xFFFFFFFF, data_bytes)))


def pcm16(samples: np.ndarray) -> bytes:
    """float [channels, n] -> interleaved little-endian PCM16 bytes."""
    x = np.clip(np.asarray(samples, np.float64), -1, 1)
    return (np.round(x.T * 32767).astype("<i2")).tobytes()


def wav16(samples: np.ndarray, rate: int) -> bytes:
    samples = np.atleast_2d(samples)
    data = pcm16(samples)
    return wav_header(rate, samples.shape[0], 16, len(data)) + data


def wav_float(samples: np.ndarray, rate: int) -> bytes:
    samples = np.atleast_2d(np.asarray(samples, np.float32))
    data = samples.T.astype("<f4").tobytes()
    return wav_header(rate, samples.shape[0], 32, len(data), codec=3) + data


def rf64(samples: np.ndarray, rate: int, declared_data_bytes: int) -> bytes:
    """An RF64 WAV whose ds64 chunk declares ``declared_data_bytes`` (64-bit)."""
    data = pcm16(np.atleast_2d(samples))
    ds64 = b"ds64" + struct.pack("<I", 28) + struct.pack("<QQQI", 0, declared_data_bytes, declared_data_bytes // 2, 0)
    fmt = b"fmt " + struct.pack("<I", 16) + struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    return b"RF64" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE" + ds64 + fmt + b"data" + struct.pack("<I", 0xFFFFFFFF) + data


def flac_with_total(data: bytes, total_samples: int) -> bytes:
    """A FLAC file whose STREAMINFO declares ``total_samples`` (36 bits)."""
    if data[:4] != b"fLaC":
        raise ValueError("not a FLAC file")
    field = int.from_bytes(data[18:26], "big")
    field = (field & ~((1 << 36) - 1)) | (total_samples & ((1 << 36) - 1))
    return data[:18] + field.to_bytes(8, "big") + data[26:]


def with_rate(wav: bytes, rate: int) -> bytes:
    """A canonical WAV with its sample-rate field replaced."""
    return wav[:24] + struct.pack("<I", rate & 0xFFFFFFFF) + wav[28:]


def speech(seconds: float, rate: int = 16000, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Cheap deterministic audio, float32 [channels, n]: a few gliding tones with noise bursts
    (synth_speechlike costs ~0.5 s a call; the corpus needs dozens of signals)."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    x = sum(a * np.sin(2 * np.pi * f * t * (1 + 0.05 * np.sin(2 * np.pi * 0.7 * t)))
            for a, f in zip(rng.uniform(0.1, 0.3, 3), rng.uniform(100, min(3000, rate / 3), 3)))
    x = x * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t) ** 2) + 0.01 * rng.standard_normal(n)
    out = np.stack([x * (0.9 ** c) + 0.002 * rng.standard_normal(n) for c in range(channels)])
    return (0.8 * out / max(1e-9, np.abs(out).max())).astype(np.float32)


def noise_bytes(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def cut(data: bytes, fraction: float = 0.5) -> bytes:
    return data[: int(len(data) * fraction)]


# ------------------------------------------------------------------ the cases


def hostile_cases(faults: bool = True, long_files: bool = True) -> list[Case]:
    """Every case of the corpus (see the module docstring)."""
    s = synth_speechlike(1.5, 16000, seed=1)
    wav = wav16(s, 16000)
    flac = encode_audio(s, 16000, "flac")
    mp3 = encode_audio(speech(3.0, seed=2), 16000, "mp3")
    opus = encode_audio(speech(3.0, 48000, seed=3), 48000, "opus")
    ogg = encode_audio(speech(3.0, seed=4), 16000, "ogg")
    m4a = encode_audio(speech(3.0, seed=5), 16000, "m4a")
    long_name = "n" * 200 + ".wav"
    deep = "names/" + "/".join(["deep-folder-" + "d" * 30] * 3) + "/" + long_name  # > 300 characters
    loud = speech(1.5, seed=6) * 1e6  # finite, far beyond [-1, 1]
    nan = speech(1.5, seed=7)
    nan[0, 100:200] = np.nan
    inf = speech(1.5, seed=8)
    inf[0, 5000] = np.inf
    square = np.sign(np.sin(2 * np.pi * 200 * np.arange(24000) / 16000))[None, :]
    cases = [
        # Good inputs, some odd: all must reach the shards.
        Case(b"good/plain.wav", wav, "ok"),
        Case(b"good/rate_8k.wav", wav16(speech(1.5, 8000, seed=9), 8000), "ok"),
        Case(b"good/rate_192k.flac", encode_audio(speech(1.2, 192000, seed=10), 192000, "flac"), "ok"),
        Case(b"good/eight_channels.wav", wav16(speech(1.5, 16000, channels=8, seed=11), 16000), "ok"),
        Case(b"good/flac_named.mp3", flac, "ok"),  # the extension lies; content decides
        Case(b"good/float_far_out_of_range.wav", wav_float(loud, 16000), "ok"),  # scaled by default
        Case(b"good/all_silent.wav", wav16(np.zeros((1, 24000)), 16000), "ok"),  # kept by default
        Case(b"good/all_clipped.wav", wav16(square, 16000), "ok"),  # kept by default
        Case(b"good/streamed_size_zero.wav", wav[:40] + b"\0\0\0\0" + wav[44:], "ok"),  # writer never sized it
        Case(b"good/dup_a.wav", wav16(speech(1.5, seed=12), 16000), "ok"),
        Case(b"good/dup_b.wav", wav16(speech(1.5, seed=12), 16000), "ok"),  # same bytes, another name
        Case(b"names/a.b.c.wav", wav, "ok"),
        Case(b"names/with space.wav", wav, "ok"),
        Case(b"names/x..y.wav", wav, "ok"),
        Case(b"names/sub..dir/z.wav", wav, "ok"),
        Case(b"names/[x]*?.wav", wav, "ok"),
        Case(b"names/pipe:x.wav", wav, "ok"),
        Case(b"names/-rf.wav", wav, "ok"),
        Case("names/h\u00e9llo w\u00f6rld \u65e5\u672c.wav".encode(), wav, "ok"),
        Case(deep.encode(), wav, "ok"),
        # Broken and hostile inputs: each a dead letter with its reason.
        Case(b"bad/zero_bytes.wav", b"", "empty"),
        Case(b"bad/header_only.wav", wav_header(16000, 1, 16, 0), "empty"),
        Case(b"bad/header_without_its_data.wav", wav[:44], "truncated"),
        Case(b"bad/truncated.wav", cut(wav), "truncated"),
        Case(b"bad/truncated.flac", cut(flac), "truncated"),
        Case(b"bad/truncated.mp3", cut(mp3), "truncated"),
        Case(b"bad/truncated.opus", cut(opus), "truncated"),
        Case(b"bad/truncated.ogg", cut(ogg), "truncated"),
        Case(b"bad/truncated.m4a", cut(m4a), "truncated"),
        Case(b"bad/truncated_in_header.wav", wav[:30], "truncated"),
        Case(b"bad/random.wav", noise_bytes(5000, 1), "unsupported_format"),
        Case(b"bad/random.mp3", noise_bytes(5000, 2), "unsupported_format"),
        Case(b"bad/random.flac", noise_bytes(300, 3), "unsupported_format"),
        Case(b"bad/random.opus", noise_bytes(70000, 4), "unsupported_format"),
        Case(b"bad/text.wav", b"this is not audio, just a text file with an audio name\n" * 20,
             "unsupported_format"),
        Case(b"bad/billions_of_frames.wav", wav_header(16000, 1, 16, 0xF0000000) + pcm16(s), "header_mismatch"),
        Case(b"bad/billions_of_frames_rf64.wav", rf64(s, 16000, 1 << 40), "header_mismatch"),
        Case(b"bad/billions_of_frames.flac", flac_with_total(flac, 1 << 35), "header_mismatch"),
        Case(b"bad/rate_zero.wav", with_rate(wav, 0), "header_mismatch"),
        Case(b"bad/rate_absurd.wav", with_rate(wav, 0xFFFFFFFF), "bad_sample_rate"),
        Case(b"bad/rate_1hz.wav", wav16(speech(0.01, 1600, seed=13)[:, :16], 1), "bad_sample_rate"),
        Case(b"bad/nan.wav", wav_float(nan, 16000), "non_finite"),
        Case(b"bad/inf.wav", wav_float(inf, 16000), "non_finite"),
        Case(b"bad/hundred_channels.wav", wav16(np.zeros((100, 1600)) + 0.1, 16000), "too_many_channels"),
        Case(b"bad/one_sample.wav", wav16(np.full((1, 1), 0.5), 16000), "too_short", stage="segment"),
        Case(b"bad/shorter_than_a_segment.wav", wav16(speech(0.2, seed=14), 16000), "too_short", stage="segment"),
        Case(b"bad/caf\xe9_latin1_name.wav", wav, "bad_name", stage="match"),
        Case(b"bad/a::b.wav", wav, "bad_name", stage="match"),
    ]
    if long_files:
        hours = int(LONG_HOURS * 3600 * 8000) * 2
        cases.append(Case(b"bad/five_hours.wav", wav_header(8000, 1, 16, hours), "too_long", sparse_bytes=44 + hours))
        tile = pcm16(speech(10.0, 8000, seed=15))
        cases.append(Case(b"good/ten_minutes.wav", wav_header(8000, 1, 16, len(tile) * int(LONG_OK_S / 10))
                          + tile * int(LONG_OK_S / 10), "ok"))
    if faults:
        cases += [
            Case(b"faults/crashes_the_decoder.wav", CRASH_MAGIC + wav, "decoder_crash", needs_faults=True),
            Case(b"faults/hangs_the_decoder.wav", HANG_MAGIC + wav, "timeout", needs_faults=True),
            Case(b"faults/after_the_faults.wav", wav16(speech(1.5, seed=16), 16000), "ok"),
        ]
    return cases


@dataclasses.dataclass(frozen=True)
class ManifestCase:
    """A manifest line and what must become of it."""

    line: dict
    expect: str
    stage: str


SECRET = "s3cr3t/with/slash"


def manifest_cases(root: Path) -> list[ManifestCase]:
    return [
        ManifestCase({"uri": "pipe:curl http://example.com/x.wav"}, "bad_manifest", "match"),
        # Credentials in a URL: refused, and never echoed (SECRET must appear nowhere in the output).
        ManifestCase({"uri": f"memory://AKIAFAKEKEY:{SECRET}@bucket/x.wav"}, "bad_manifest", "match"),
        # A hostile id: the key must stay inside the shard.
        ManifestCase({"uri": str(root / "good" / "plain.wav"), "id": "../../" * 60 + "/etc/passwd\\..\0x" * 20},
                     "ok", ""),
    ]


def write_corpus(root: Path, faults: bool = True, long_files: bool = True) -> list[Case]:
    """Writes the cases under ``root`` (a manifest too, as ``root/../manifest.jsonl``)."""
    cases = hostile_cases(faults=faults, long_files=long_files)
    base = os.fsencode(str(root))
    for case in cases:
        path = os.path.join(base, case.name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(case.data)
            if case.sparse_bytes:
                f.truncate(case.sparse_bytes)  # a hole: no disk, no time
    manifest = root.parent / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(c.line) + "\n" for c in manifest_cases(root)))
    return cases


def _segfault() -> None:
    import ctypes

    ctypes.string_at(0)  # SIGSEGV


class FaultyDecoder(FileDecoder):
    """Crashes or hangs on the magic files when their header is probed, else decodes for real."""

    def probe(self, f, uri):
        f.seek(0)
        head = f.read(len(CRASH_MAGIC))
        if head == CRASH_MAGIC:
            _segfault()
        if head.startswith(HANG_MAGIC):
            while True:
                time.sleep(1)
        return super().probe(f, uri)


class FaultKinds(FileDecoder):
    """For the isolation tests: the file's first line says what goes wrong in its whole decode."""

    def decode_whole(self, f, uri, config, deadline):
        from audiotok.transforms.failures import AudiotokError

        f.seek(0)
        first = f.read(64).split(b"\n", 1)[0]
        if first == b"segfault":
            _segfault()
        if first == b"abort":
            os.abort()
        if first == b"exit":
            os._exit(3)
        if first == b"hang":
            time.sleep(3600)
        if first == b"bug":
            raise KeyError("a bug in a decoder")
        if first == b"memory":
            raise MemoryError()
        if first == b"reason":
            raise AudiotokError("decode_error", "a decoder said no")
        return super().decode_whole(f, uri, config, deadline)


FAULT_POINTS = ("probe", "plan", "whole", "chunk")


class FaultPoints(FileDecoder):
    """Faults at one point of the route, chosen by the file's name: ``KIND-at-POINT.*``."""

    @staticmethod
    def _at(point: str, uri: str, start: int = 0) -> None:
        name = os.path.basename(uri)
        log = os.environ.get("AUDIOTOK_TEST_CALL_LOG")
        if log:
            with open(log, "a") as out:
                out.write(f"{point} {name}\n")
        kind, _, where = name.split(".", 1)[0].partition("-at-")
        if where != point or (point == "chunk" and start == 0):
            return
        if kind == "segfault":
            _segfault()
        if kind == "hang":
            time.sleep(3600)

    def probe(self, f, uri):
        self._at("probe", uri)
        return super().probe(f, uri)

    def plan(self, f, uri, probe, config, split, deadline):
        self._at("plan", uri)
        return super().plan(f, uri, probe, config, split, deadline)

    def decode_whole(self, f, uri, config, deadline):
        self._at("whole", uri)
        return super().decode_whole(f, uri, config, deadline)

    def stretch(self, item, config, chunk_s):
        self._at("chunk", item.source.uri, item.start)
        yield from super().stretch(item, config, chunk_s)


# ------------------------------------------------------------------ the pipeline run


def run_pipeline(root: Path, output: Path, timeout_s: float = 4.0) -> dict:
    """The corpus through ``audiotok.pipelines.tokenize`` (build + run on FnApiRunner, process isolation,
    faulty decoder). Returns a JSON-able report: failures, samples per source, peak memory."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from audiotok.pipelines import tokenize as job
    from audiotok.transforms import dataset, isolation, metrics
    from audiotok.transforms.decode import DecodeConfig
    from audiotok.transforms.match import MatchConfig
    from audiotok.transforms.segment import SegmentConfig
    from audiotok.transforms.shards import ShardConfig
    from audiotok.transforms.tokenize import TokenizeConfig

    config = job.JobConfig(
        output=str(output),
        match=MatchConfig(patterns=(f"{root}/**/*",), manifests=(str(root.parent / "manifest.jsonl"),)),
        decode=DecodeConfig(isolation="process", timeout_s=timeout_s, decoder="hostile_corpus:FaultyDecoder"),
        segment=SegmentConfig(segment_s=30.0, min_segment_s=0.5), tokenize=TokenizeConfig(specs="logmel"),
        shards=ShardConfig(max_samples=20), overwrite=True, max_failure_fraction=0.3)
    start = time.monotonic()
    result = job.launch(config, PipelineOptions(["--runner=FnApiRunner"]))  # what job.run does, plus
    result.wait_until_finish()                                              # the distributions
    counters = job.collect_counters(result)
    rss = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(metrics.NAMESPACE)
                                 .with_name("decoder_max_rss_mb"))["distributions"]
    index = dataset.read_index(str(output))
    too_many = job.check_failure_fraction(config, index, counters)
    wall_s = time.monotonic() - start
    failures = []
    for row in dataset.failure_rows(str(output), index):
        failures += [json.loads(line) for line in (output / row["url"]).read_text("utf-8").splitlines()]
    return {
        "failures": failures,
        "shards": [str(output / row["url"]) for row in dataset.shard_rows(str(output), index)],
        "counters": counters,
        "too_many_failures": too_many,
        "wall_s": wall_s,
        "peak_rss_mb": isolation.peak_rss_mb(),
        "decoder_max_rss_mb": max((d.committed or d.attempted).max for d in rss) if rss else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the corpus under this folder")
    parser.add_argument("--run", type=Path, metavar="OUTPUT", help="write the corpus next to OUTPUT and run the "
                        "pipeline on it; prints a JSON report")
    parser.add_argument("--no-long", action="store_true", help="leave out the long files")
    args = parser.parse_args(argv)
    if args.out:
        cases = write_corpus(args.out, long_files=not args.no_long)
        print(f"{len(cases)} files under {args.out}", file=sys.stderr)
    if args.run:
        root = args.run.parent / "hostile-in"
        write_corpus(root, long_files=not args.no_long)
        print(json.dumps(run_pipeline(root, args.run)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
