"""Hostile and broken input: nothing crashes, nothing is lost, nothing escapes.

Every case of ``hostile_corpus`` through the decoder (and the real pipeline in a subprocess,
with peak memory measured), the policy knobs, header lies that must not allocate, safe keys
and tars, pipe: URLs, redaction of credentials, and no pickle on any input path.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hostile_corpus as hc
from audiotok.pipelines import cli
from audiotok.pipelines import tokenize as job
from audiotok.transforms import decode, failures, match, policy, readers
from audiotok.transforms.decode import DecodeConfig
from audiotok.transforms.failures import AudiotokError, Failure
from audiotok.transforms.records import AudioRef, Sample
from audiotok.transforms.segment import SegmentConfig, cut_segments, segment_key
from audiotok.transforms.dataset import check_key
from audiotok.transforms.shards import ShardConfig, ShardWriter

ROOT = Path(__file__).resolve().parents[2]
IN_PROCESS = DecodeConfig(isolation="none")
# Peak resident memory of the pipeline run below (Beam, torch and logmel in one process, a
# 10-minute file among the inputs), and of its decoder process, each its own VmHWM. Measured ~840 MB
# and ~75 MB.
PIPELINE_PEAK_RSS_MB = 1200
DECODER_PEAK_RSS_MB = 400


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile") / "in"
    cases = hc.write_corpus(root, faults=False)
    return root, cases


def _uri(root: Path, case: hc.Case) -> str:
    return os.fsdecode(os.path.join(os.fsencode(str(root)), case.name))


def _outcome(uri: str, config: DecodeConfig = IN_PROCESS) -> tuple[str, str]:
    try:
        decoded, _ = decode.decode_checked(AudioRef(uri), config)
    except AudiotokError as e:
        return e.reason, e.message
    if not list(cut_segments(decoded, SegmentConfig(30.0, 0.5))):
        return failures.TOO_SHORT, f"{decoded.duration_s} s"
    return "ok", ""


def test_every_case_gets_its_reason(corpus):
    root, cases = corpus
    wrong = []
    for case in cases:
        uri = _uri(root, case)
        if case.stage == "match":
            try:
                match.check_listed_name(uri)
                got = ("ok", "")
            except AudiotokError as e:
                got = (e.reason, e.message)
        else:
            got = _outcome(uri)
        if got[0] != case.expect:
            wrong.append((case.label, case.expect, got))
    assert not wrong


def test_hours_long_header_is_refused_before_reading(corpus):
    root, cases = corpus
    (case,) = [c for c in cases if c.name == b"bad/five_hours.wav"]
    tracemalloc.start()
    start = time.monotonic()
    reason, message = _outcome(_uri(root, case))
    elapsed = time.monotonic() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert reason == failures.TOO_LONG and "18000.0 s > 14400.0 s" in message
    assert elapsed < 1.0 and peak < 1 << 20  # 288 MB of declared data: not read, not allocated


@pytest.mark.parametrize("name", [b"bad/billions_of_frames.wav", b"bad/billions_of_frames_rf64.wav",
                                  b"bad/billions_of_frames.flac", b"bad/rate_absurd.wav"])
def test_lying_headers_allocate_nothing_big(corpus, name):
    root, cases = corpus
    (case,) = [c for c in cases if c.name == name]
    tracemalloc.start()
    reason, _ = _outcome(_uri(root, case))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert reason == case.expect
    assert peak < 2 << 20  # the data present is 48 KB; the headers claim up to 2 TB


def test_decoding_stops_at_the_limits_with_memory_bounded():
    # A 2-minute FLAC whose header gives no length: only decoding can tell, and it stops.
    tile = hc.speech(10.0, 8000, seed=3)
    flac = hc.flac_with_total(hc.encode_audio(np.tile(tile, 12), 8000, "flac"), 0)
    tracemalloc.start()
    with pytest.raises(AudiotokError) as e:
        readers.decode_audio(flac, "x.flac", DecodeConfig(max_duration_s=30.0))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert e.value.reason == failures.TOO_LONG and "decoding passed" in e.value.message
    assert peak < 3 * 30 * 8000 * 4  # ~30 s decoded (1 MB), not 2 minutes
    # The memory guard, whatever the duration limit.
    with pytest.raises(AudiotokError, match="max_decoded_bytes") as e:
        readers.decode_audio(flac, "x.flac", DecodeConfig(max_duration_s=None, max_decoded_bytes=1 << 20))
    assert e.value.reason == failures.TOO_LONG


def test_decoded_size_is_the_peak():
    wav = hc.wav16(np.tile(hc.speech(1.0, 16000, channels=2, seed=4), 30), 16000)
    tracemalloc.start()
    audio = readers.decode_audio(io.BytesIO(wav), "x.wav")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert audio.samples.shape == (2, 480000)
    assert peak < audio.samples.nbytes * 1.1 + (1 << 20)  # filled in place: no second copy


@pytest.mark.parametrize("fmt,ext", [("wav", "wav"), ("flac", "flac"), ("mp3", "mp3"), ("opus", "opus"),
                                     ("ogg", "ogg")])
def test_truncated_keep_keeps_what_decodes(fmt, ext):
    rate = 48000 if fmt == "opus" else 16000
    data = hc.cut(hc.encode_audio(hc.speech(3.0, rate, seed=5), rate, fmt))
    with pytest.raises(AudiotokError) as e:
        readers.decode_audio(data, f"x.{ext}")
    assert e.value.reason == failures.TRUNCATED
    audio = readers.decode_audio(data, f"x.{ext}", DecodeConfig(truncated="keep"))
    assert audio.notes == ("truncated",) and 0.5 < audio.duration_s < 2.5


def test_sample_value_policy_knobs():
    loud = hc.wav_float(hc.speech(1.0, seed=6) * 1e6, 16000)
    nan = hc.speech(1.0, seed=7)
    nan[0, :50] = np.nan
    nan_wav = hc.wav_float(nan, 16000)
    silent = hc.wav16(np.full((1, 16000), 1e-4), 16000)  # -80 dBFS of DC
    square = hc.wav16(np.sign(np.sin(np.arange(16000) / 5.0))[None], 16000)

    def run(data, **knobs):
        audio = readers.decode_audio(data, "x", DecodeConfig(**knobs))
        samples, notes = policy.apply_policy(audio.samples, audio.sample_rate, DecodeConfig(**knobs))
        return readers.Audio(samples, audio.sample_rate, audio.format, notes)

    scaled = run(loud)
    assert scaled.notes == ("out_of_range_scaled",) and np.abs(scaled.samples).max() == pytest.approx(1.0)
    clipped = run(loud, out_of_range="clip")
    assert clipped.notes[0] == "out_of_range_clipped" and np.abs(clipped.samples).max() <= 1.0
    zeroed = run(nan_wav, non_finite="zero")
    assert zeroed.notes == ("non_finite_zeroed",) and np.isfinite(zeroed.samples).all()
    assert (zeroed.samples[0, :50] == 0).all()
    assert run(silent).notes == ("silent",) and run(square).notes == ("clipped",)
    for data, knobs, reason in [(loud, {"out_of_range": "reject"}, failures.OUT_OF_RANGE),
                                (nan_wav, {}, failures.NON_FINITE),
                                (silent, {"silence": "reject"}, failures.SILENT),
                                (square, {"clipping": "reject"}, failures.CLIPPED),
                                (silent, {"silence": "reject", "silence_threshold_dbfs": -90}, None),
                                (square, {"clipping": "reject", "clipping_fraction": 1.0}, None)]:
        if reason is None:
            run(data, **knobs)
            continue
        with pytest.raises(AudiotokError) as e:
            run(data, **knobs)
        assert e.value.reason == reason, knobs


def test_rates_and_channels_limits_are_knobs():
    eight_k = hc.wav16(hc.speech(1.0, 8000, seed=8), 8000)
    with pytest.raises(AudiotokError, match="outside") as e:
        readers.decode_audio(eight_k, "x", DecodeConfig(min_sample_rate=16000))
    assert e.value.reason == failures.BAD_SAMPLE_RATE
    six = hc.wav16(hc.speech(0.5, channels=6, seed=9), 16000)
    with pytest.raises(AudiotokError) as e:
        readers.decode_audio(six, "x", DecodeConfig(max_channels=2))
    assert e.value.reason == failures.TOO_MANY_CHANNELS
    for bad in ({"truncated": "maybe"}, {"silence": "drop"}, {"clipping_fraction": 0}, {"timeout_s": -1},
                {"max_decoded_bytes": 10}, {"isolation": "thread"}):
        with pytest.raises(ValueError, match="Found"):
            DecodeConfig(**bad)
    # What runs, not what comes out, stays out of the incremental fingerprint.
    assert DecodeConfig(isolation="none", timeout_s=5).content_settings() == DecodeConfig().content_settings()


# ------------------------------------------------------------------ keys, tars, URLs, secrets

_NASTY_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=400) | st.sampled_from(
    ["..", "../../etc/passwd", "/abs/path", "a/b\\c", "", ".", "-", "\0", "..\\..\\x", "~/x", "C:\\x"])


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(uri=_NASTY_TEXT, id_=st.none() | _NASTY_TEXT, start_s=st.floats(0, 1e6, allow_nan=False))
def test_sample_keys_are_always_safe(uri, id_, start_s):
    ref = AudioRef(uri=uri or "x", meta={"id": id_} if id_ else {})
    key = segment_key(ref, start_s)
    assert check_key(key) == key and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,199}", key)


def test_written_tars_pass_the_data_filter(tmp_path):
    uris = ["/c/../../etc/passwd.wav", "/c/a.b.c.wav", "s3://b/" + "x" * 500 + ".wav", "/c/\u65e5\u672c.wav",
            b"/c/caf\xe9.wav".decode("utf-8", "surrogateescape"), "/c/.hidden", "/c/ spaced .wav"]
    refs = [AudioRef(u) for u in uris] + [AudioRef("/c/a.wav", meta={"id": "../../" * 40 + "x"})]
    writer = ShardWriter(str(tmp_path / "tmp"), ShardConfig(max_samples=100))
    for ref in refs:
        writer.add(Sample(key=segment_key(ref, 1.5), meta={"duration_s": 1.0, "source": {"uri": "u"}},
                          streams={"logmel": np.zeros((3, 80), np.float16)}))
    (written,) = writer.close()
    dest = tmp_path / "extract"
    with tarfile.open(written.temp_url) as tar:
        names = tar.getnames()
        tar.extractall(dest, filter="data")  # raises on anything outside dest, links, devices
    assert len(names) == 2 * len(refs)
    for path in dest.rglob("*"):
        assert path.resolve().parent == dest.resolve()


def test_pipe_urls_are_refused_everywhere(tmp_path):
    for url in ("pipe:curl http://x/y.wav", "pipe:cat /etc/passwd"):
        with pytest.raises(ValueError, match="refusing"):
            match.MatchConfig(patterns=(url,))
        with pytest.raises(ValueError, match="refusing"):
            match.MatchConfig(manifests=(url,))
        with pytest.raises(ValueError, match="refusing"):
            job.JobConfig(output=url, match=match.MatchConfig(patterns=("x",)))
        with pytest.raises(AudiotokError) as e:
            match.parse_manifest_line(json.dumps({"uri": url}), str(tmp_path / "m.jsonl"), 1)
        assert e.value.reason == failures.BAD_MANIFEST  # not quietly resolved to a local path


def test_credentials_never_reach_records_or_messages():
    uri = "s3://AKIAEXAMPLE:wJalr/XUtnFEMI/K7MDENG@bucket/a.wav"
    error = AudiotokError(failures.READ_ERROR, 'Invalid bucket name "AKIAEXAMPLE:wJalr/XUtnFEMI/K7MDENG@bucket"', uri)
    record = Failure.from_error(uri, error, "decode").to_json()
    for text in (record, str(error)):
        assert "wJalr" not in text and "AKIAEXAMPLE" not in text and "***" in text
    assert json.loads(record)["uri"] == "s3://***@bucket/a.wav"
    assert failures.redact("https://h/x.wav?X-Amz-Signature=abc&X-Amz-Credential=def&v=1") == (
        "https://h/x.wav?X-Amz-Signature=***&X-Amz-Credential=***&v=1")
    assert failures.redact("https://user:pass@host/x") == "https://***@host/x"
    assert failures.redact("tokenizer: 3 tokens at gs://b/me@x.com") == "tokenizer: 3 tokens at gs://b/me@x.com"
    latin1 = Failure(b"/c/caf\xe9.wav".decode("utf-8", "surrogateescape"), failures.BAD_NAME, "m").to_json()
    assert latin1.encode("utf-8") and "caf\\\\xe9" in latin1  # valid UTF-8, the byte spelled out


def test_no_pickle_is_loaded_on_any_input_path():
    pattern = re.compile(r"pickle\.loads?\(|allow_pickle\s*=\s*True|dill\.loads?\(|cloudpickle\.loads?\(|"
                         r"joblib\.load\(|torch\.load\((?![^)]*weights_only\s*=\s*True)|marshal\.loads?\(")
    offenders = []
    for folder in ("transforms", "pipelines", "runners"):
        for path in (ROOT / folder).rglob("*.py"):
            for n, line in enumerate(path.read_text("utf-8").splitlines(), 1):
                if pattern.search(line) and not line.lstrip().startswith("#"):
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders


# ------------------------------------------------------------------ the real pipeline


@pytest.fixture(scope="module")
def pipeline_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("hostile-run") / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "hostile_corpus.py"), "--run", str(out)],
                          capture_output=True, text=True, timeout=400, cwd=str(ROOT))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def test_hostile_corpus_through_the_pipeline(pipeline_report):
    out, report, stderr = pipeline_report
    root = out.parent / "hostile-in"
    by_uri = {f["uri"]: f for f in report["failures"]}
    samples: dict[str, list[dict]] = {}
    for url in report["shards"]:
        with tarfile.open(url) as tar:
            tar.extractall(out.parent / "extracted", filter="data")
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    meta = json.load(tar.extractfile(member))
                    samples.setdefault(meta["source"]["uri"], []).append(meta)
    wrong = []
    for case in hc.hostile_cases():
        uri = failures.printable(_uri(root, case))
        got = ("ok" if uri in samples else None, by_uri.get(uri, {}).get("reason"))
        want = ("ok", None) if case.expect == "ok" else (None, case.expect)
        if got != want or (case.expect != "ok" and by_uri[uri]["stage"] != case.stage):
            wrong.append((case.label, want, got))
    assert not wrong
    manifest = f"{root.parent / 'manifest.jsonl'}"
    assert [by_uri[f"{manifest}:{i}"]["reason"] for i in (1, 2)] == ["bad_manifest", "bad_manifest"]
    # Same content under two names: both processed, distinct keys, same tokens.
    dups = [samples[failures.printable(str(root / "good" / n))][0] for n in ("dup_a.wav", "dup_b.wav")]
    assert dups[0]["key"] != dups[1]["key"]
    # The hostile manifest id: a safe key, the id itself kept in the metadata.
    hostile = [m for ms in samples.values() for m in ms if m.get("id", "").startswith("../")]
    assert len(hostile) == 1 and re.fullmatch(r"[A-Za-z0-9_-]{1,200}", hostile[0]["key"])
    # Nothing escapes: no secret anywhere in the output, the failures or the logs.
    for path in out.rglob("*"):
        if path.is_file():
            assert hc.SECRET.encode() not in path.read_bytes(), path
    assert hc.SECRET not in stderr
    # Too much of this corpus is bad for max_failure_fraction=0.3: the run says so, after writing.
    assert report["too_many_failures"] and "failed, more than --max-failure-fraction 0.3" in report[
        "too_many_failures"]
    assert (out / "index.json").exists()
    # Memory: the whole job, and the decoder process.
    assert report["peak_rss_mb"] < PIPELINE_PEAK_RSS_MB, report["peak_rss_mb"]
    assert 0 < report["decoder_max_rss_mb"] < DECODER_PEAK_RSS_MB


def test_cli_exits_non_zero_when_most_of_the_corpus_fails(tmp_path, capsys):
    root = tmp_path / "in"
    root.mkdir()
    (root / "good.wav").write_bytes(hc.wav16(hc.speech(1.2, seed=10), 16000))
    (root / "bad1.wav").write_bytes(b"")
    (root / "bad2.mp3").write_bytes(hc.noise_bytes(3000, 5))
    out = tmp_path / "out"
    argv = ["tokenize", "--input", f"{root}/*", "--output", str(out), "--decode-isolation", "none",
            "--min-segment-s", "0.5", "--silence", "reject", "--max-duration-s", "60"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "2 of 3 inputs (67%) failed, more than --max-failure-fraction 0.5" in err
    index = json.loads((out / "index.json").read_text())  # written before the verdict
    assert index["totals"]["samples"] == 1 and index["totals"]["failures_by_reason"] == {
        "empty": 1, "unsupported_format": 1}


def test_every_reason_code_and_policy_flag_is_documented_in_the_readme():
    from pathlib import Path

    from audiotok.pipelines import options

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Bad input"):]
    section = section[:section.index("\n## ", 1)]
    missing = [r for r in failures.REASONS if f"| `{r}` |" not in section]
    assert not missing, f"reason codes without a row in the README's table: {missing}"
    # The decode policy flags (every flag that sets a DecodeConfig field), and the run's failure threshold.
    flags = [f.name for f in options.DECODE_FLAGS] + ["--max-failure-fraction"]
    undocumented = [f for f in flags if f"`{f}" not in section]
    assert len(flags) >= 14 and not undocumented, f"policy flags missing from the README: {undocumented}"
