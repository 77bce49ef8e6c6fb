"""Fuzzing decode -> policy -> downmix -> resample -> segment -> tokenize (logmel), and the
long-file route (header probe, plan with its statistics pass, the whole file streamed and a
stretch from its middle).

The target takes any bytes: real files of every format with their headers and data mutated
(truncated, bytes flipped, size and rate fields overwritten, bytes inserted and deleted),
container magics followed by noise, and plain noise. The property: ``decode_audio`` raises
nothing but ``AudiotokError`` with a known reason, whatever it returns is within the limits,
and the rest of the chain turns it into finite tokens without an error.

CI runs a short, derandomized search (``ci`` profile, < 20 s). Longer runs::

    HYPOTHESIS_PROFILE=long python -m pytest tests/transforms/test_fuzz.py     # 20 000 examples, random
    python tests/transforms/test_fuzz.py --minutes 10                          # hypothesis, until time is up
    python tests/transforms/test_fuzz.py --minutes 10 --atheris                # coverage-guided (atheris==3.0.0)

A failing example is printed (hypothesis shrinks it first) and, with ``--save DIR``, written
to a file for a regression test.
"""

from __future__ import annotations

import argparse
import functools
import io
import os
import struct
import sys
import time
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

if __package__ in (None, ""):  # run as a script: the repo and tests/ on the path, as under pytest
    sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[1])]

import hostile_corpus as hc  # noqa: E402
from audiotok.transforms import containers, decode, failures, policy, readers, tokenize  # noqa: E402
from audiotok.transforms.decode import DecodeConfig, FileDecoder, SplitConfig  # noqa: E402
from audiotok.transforms.failures import AudiotokError  # noqa: E402
from audiotok.transforms.records import AudioRef, Decoded, Sample  # noqa: E402
from audiotok.transforms.segment import SegmentConfig, cut_segments  # noqa: E402

settings.register_profile("ci", max_examples=150, deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("long", max_examples=20_000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")

TARGET_RATE = 16000
# Small limits: the fuzzer explores the guards, not the machine's memory.
BASE_CONFIG = DecodeConfig(isolation="none", max_duration_s=20.0, max_decoded_bytes=4 << 20, timeout_s=10.0)
SEGMENTS = SegmentConfig(segment_s=2.0, min_segment_s=0.025)  # >= 2 logmel frames (see the report on shorter)
SPLIT = SplitConfig(split_s=20.0, segment_s=2.0, chunk_s=0.25)
MAGICS = (b"RIFF\x24\x00\x00\x00WAVEfmt ", b"RF64\xff\xff\xff\xffWAVEds64", b"fLaC", b"OggS\x00\x02",
          b"ID3\x04\x00\x00\x00\x00\x00\x00", b"\xff\xfb\x90\x64", b"\xff\xf1\x50\x80", b"\x00\x00\x00\x20ftypM4A ",
          b"FORM\x00\x00\x00\x20AIFFCOMM", b"\x1a\x45\xdf\xa3")
INTERESTING = (0, 1, 2, 7, 8, 255, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFFFFFE,
               44100, 48000, 16000, 192000, 1 << 20)


@functools.lru_cache(maxsize=1)
def seeds() -> dict[str, bytes]:
    """Short real files, one per format and a few layouts (made once per process)."""
    mono = hc.speech(0.3, 16000, seed=1)
    stereo = hc.speech(0.3, 16000, channels=2, seed=2)
    return {
        "wav": hc.wav16(mono, 16000),
        "wav-stereo-8k": hc.wav16(hc.speech(0.3, 8000, channels=2, seed=3), 8000),
        "wav-float": hc.wav_float(stereo, 16000),
        "rf64": hc.rf64(mono, 16000, len(hc.pcm16(mono))),
        "flac": hc.encode_audio(stereo, 16000, "flac"),
        "mp3": hc.encode_audio(mono, 16000, "mp3"),
        "ogg": hc.encode_audio(mono, 16000, "ogg"),
        "opus": hc.encode_audio(hc.speech(0.3, 48000, seed=4), 48000, "opus"),
        "m4a": hc.encode_audio(mono, 16000, "m4a"),
    }


@st.composite
def hostile_bytes(draw) -> bytes:
    kind = draw(st.sampled_from(["mutated", "mutated", "mutated", "magic", "noise"]))
    if kind == "noise":
        return draw(st.binary(max_size=2048))
    if kind == "magic":
        return draw(st.sampled_from(MAGICS)) + draw(st.binary(max_size=2048))
    data = bytearray(seeds()[draw(st.sampled_from(sorted(seeds())))])
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        # Headers are where lies do damage: half the positions fall in the first 128 bytes.
        pos = draw(st.integers(0, min(127, len(data) - 1)) | st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["truncate", "flip", "int32", "int16", "insert", "delete", "append"]))
        if op == "truncate":
            del data[pos:]
        elif op == "flip":
            data[pos] ^= draw(st.integers(1, 255))
        elif op in ("int32", "int16"):
            size = 4 if op == "int32" else 2
            value = draw(st.sampled_from(INTERESTING) | st.integers(0, (1 << (8 * size)) - 1)) % (1 << (8 * size))
            order = draw(st.sampled_from("<>"))
            data[pos: pos + size] = struct.pack(order + ("I" if size == 4 else "H"), value)
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete":
            del data[pos: pos + draw(st.integers(1, 64))]
        else:
            data += draw(st.binary(min_size=1, max_size=256))
    return bytes(data)


@st.composite
def policies(draw) -> DecodeConfig:
    import dataclasses

    return dataclasses.replace(
        BASE_CONFIG, truncated=draw(st.sampled_from(["reject", "keep"])),
        non_finite=draw(st.sampled_from(["reject", "zero"])),
        out_of_range=draw(st.sampled_from(["scale", "clip", "reject"])))


@functools.lru_cache(maxsize=1)
def logmel():
    from audiotok.transforms.tokenizers import registry

    tok = registry.create("logmel")
    tok.load("cpu")
    return tok


def check_stream(data: bytes, config: DecodeConfig) -> str:
    """The long-file route on the same bytes: probe the header, plan the file (statistics pass,
    cut check), then stream it in chunks and a stretch from its middle. Only AudiotokErrors with
    known reasons may come out."""
    route, uri = FileDecoder(), "fuzz://input"
    try:
        info = route.probe(io.BytesIO(data), uri)
        assert info.sample_rate > 0 and info.channels > 0, info
        plan = route.plan(io.BytesIO(data), uri, info, config, SPLIT, None)
        total = 0
        for chunk in route._stretch(io.BytesIO(data), uri, info, 0, None, plan.repair, 0.25, config,
                                    decode._Budget(None), plan.frames):
            assert chunk.dtype == np.float32 and chunk.ndim == 1 and np.isfinite(chunk).all()
            total += chunk.shape[0]
        middle = total // 2
        for chunk in route._stretch(io.BytesIO(data), uri, info, middle, total, plan.repair, 0.25, config,
                                    decode._Budget(None), plan.frames):
            assert chunk.dtype == np.float32 and np.isfinite(chunk).all()
    except AudiotokError as e:
        assert e.reason in failures.REASONS, e.reason
        return e.reason
    return "ok"


def check_chain(data: bytes, config: DecodeConfig = BASE_CONFIG) -> str:
    """The property; returns what happened (a reason code or ``ok``), raises AssertionError on a bug."""
    check_stream(data, config)
    try:
        audio = readers.decode_audio(data, "fuzz://input", config)
    except AudiotokError as e:
        assert e.reason in failures.REASONS, e.reason
        return e.reason
    samples = audio.samples
    assert isinstance(samples, np.ndarray) and samples.dtype == np.float32 and samples.ndim == 2
    channels, n = samples.shape
    assert 1 <= channels <= config.max_channels, channels
    assert config.min_sample_rate <= audio.sample_rate <= config.max_sample_rate, audio.sample_rate
    assert n <= config.max_frames(audio.sample_rate, channels), n
    try:
        samples, _ = policy.apply_policy(audio.samples, audio.sample_rate, config)
    except AudiotokError as e:
        assert e.reason in failures.REASONS, e.reason
        return e.reason
    mono = decode.downmix(samples)
    assert mono.shape == (n,) and np.isfinite(mono).all() and np.abs(mono).max() <= 1.0
    resampled = decode.resample(mono, audio.sample_rate, TARGET_RATE)
    assert resampled.dtype == np.float32 and np.isfinite(resampled).all()
    assert abs(resampled.shape[0] - n * TARGET_RATE / audio.sample_rate) <= 2
    decoded = Decoded(source=AudioRef("fuzz://input"), audio=resampled, sample_rate=TARGET_RATE,
                      source_sample_rate=audio.sample_rate, source_channels=channels, source_format=audio.format)
    segments = list(cut_segments(decoded, SEGMENTS))
    for out in tokenize.tokenize_batch([logmel()], segments) if segments else []:
        assert isinstance(out, Sample), out.message
        tokens = out.streams["logmel"]
        assert tokens.shape[0] >= 1 and np.isfinite(tokens.astype(np.float32)).all()
    return "ok"


@settings(settings.get_profile(PROFILE))
@given(data=hostile_bytes(), config=policies())
def test_decode_to_tokens_never_breaks(data, config):
    check_chain(data, config)


def test_seeds_go_all_the_way():
    # The mutations start from files that decode: the fuzzer explores near working code paths.
    assert {name: check_chain(data) for name, data in seeds().items()} == {name: "ok" for name in seeds()}


def _patched(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value):]


def test_what_the_fuzzer_found_stays_fixed():
    wav = seeds()["wav"]
    found = {
        # A PCM WAV declaring 0 bits per sample: libsndfile refuses it, and FFmpeg's stream has
        # no codec context (``None``): decode_audio raised AttributeError.
        "wav with 0 bits per sample": (_patched(wav, 34, b"\0\0"), failures.HEADER_MISMATCH),
    }
    assert {name: check_chain(data) for name, (data, _) in found.items()} == {
        name: reason for name, (_, reason) in found.items()}


# ------------------------------------------------------------------ long runs


def _run_hypothesis(minutes: float, save: Path | None) -> int:
    end = time.monotonic() + minutes * 60
    found: list[bytes] = []

    @settings(max_examples=500, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(data=hostile_bytes(), config=policies())
    def search(data, config):
        try:
            check_chain(data, config)
        except Exception:
            found.append(data)
            raise

    rounds = 0
    while time.monotonic() < end:
        rounds += 1
        try:
            search()
        except Exception as e:  # hypothesis has shrunk it: report and keep the input
            print(f"FAILED after {rounds} round(s): {type(e).__name__}: {e}", file=sys.stderr)
            if save and found:
                save.mkdir(parents=True, exist_ok=True)
                (save / f"crash-{int(time.time())}.bin").write_bytes(found[-1])
            return 1
    print(f"ok: {rounds * 500} examples in {minutes:g} min", file=sys.stderr)
    return 0


def _run_atheris(minutes: float) -> int:
    try:
        import atheris
    except ImportError:
        raise SystemExit("pip install atheris==3.0.0 (coverage-guided fuzzing), or run without --atheris")
    import dataclasses

    from audiotok.transforms import isolation, segment

    for module in (containers, readers, policy, decode, failures, segment, isolation):  # coverage of our code guides the search
        for name, value in vars(module).items():
            if callable(value) and getattr(value, "__module__", None) == module.__name__ and not isinstance(
                    value, type):
                setattr(module, name, atheris.instrument_func(value))
    knobs = [dataclasses.replace(BASE_CONFIG, truncated=t, non_finite=n, out_of_range=o)
             for t in ("reject", "keep") for n in ("reject", "zero") for o in ("scale", "clip", "reject")]

    def one(data: bytes) -> None:  # the first byte picks the policy
        if data:
            check_chain(data[1:], knobs[data[0] % len(knobs)])

    corpus = Path(os.environ.get("TMPDIR", "/tmp")) / "audiotok-fuzz-seeds"
    corpus.mkdir(exist_ok=True)
    for name, data in seeds().items():
        (corpus / name).write_bytes(b"\0" + data)
    atheris.Setup([sys.argv[0], f"-max_total_time={int(minutes * 60)}", "-rss_limit_mb=4096", str(corpus)], one)
    atheris.Fuzz()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="fuzz decode -> tokenize for a while")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--atheris", action="store_true", help="coverage-guided with atheris (libFuzzer)")
    parser.add_argument("--save", type=Path, help="write failing inputs here")
    args = parser.parse_args(argv)
    if args.atheris:
        return _run_atheris(args.minutes)
    return _run_hypothesis(args.minutes, args.save)


if __name__ == "__main__":
    sys.exit(main())
