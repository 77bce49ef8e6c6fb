"""Decoding in a reused child process: crashes and hangs cost one file, never the worker."""

from __future__ import annotations

import dataclasses
import time

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from audio_fixtures import encode_audio, synth_speechlike
from audiotok.transforms import failures, isolation
from audiotok.transforms.decode import DecodeConfig
from audiotok.transforms.read import DecodeAudio
from audiotok.transforms.failures import AudiotokError
from audiotok.transforms.records import AudioRef

TIMEOUT_S = 1.5
FAULTS = DecodeConfig(isolation="process", timeout_s=TIMEOUT_S, decoder="hostile_corpus:FaultKinds")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A good stereo FLAC, a loud float WAV, and one file per fault (its first line names it)."""
    root = tmp_path_factory.mktemp("iso")
    paths = {}
    good = synth_speechlike(1.0, 22050, channels=2, seed=1)
    (root / "good.flac").write_bytes(encode_audio(good, 22050, "flac"))
    (root / "loud.wav").write_bytes(encode_audio(good * 4, 22050, "wav-float"))
    (root / "empty.wav").write_bytes(b"")
    paths.update(good=root / "good.flac", loud=root / "loud.wav", empty=root / "empty.wav")
    for kind in ("segfault", "abort", "exit", "hang", "bug", "memory", "reason"):
        paths[kind] = root / f"{kind}.wav"
        paths[kind].write_bytes(kind.encode() + b"\n" + b"\0" * 64)
    return {k: str(v) for k, v in paths.items()}


@pytest.fixture
def decoder():
    d = isolation.ProcessDecoder(FAULTS)
    yield d
    d.close()


def _reason(decoder, uri):
    with pytest.raises(AudiotokError) as e:
        decoder.decode(AudioRef(uri))
    return e.value


def test_same_result_as_in_process_and_one_process_reused(decoder, files):
    in_process = isolation.InProcessDecoder(DecodeConfig(isolation="none"))
    for name in ("good", "loud", "good"):
        got, notes = decoder.decode(AudioRef(files[name], meta={"id": "x"}))
        want, want_notes = in_process.decode(AudioRef(files[name]))
        np.testing.assert_array_equal(got.audio, want.audio)
        assert got.audio.dtype == np.float32 and got.audio.flags.writeable and got.audio.flags.c_contiguous
        assert (got.sample_rate, got.source_channels, got.source_format) == (22050, 2, "flac" if name == "good"
                                                                              else "wav")
        assert notes == want_notes == (("out_of_range_scaled",) if name == "loud" else ())
        assert got.source.meta == {"id": "x"}  # the caller's reference, not the child's
    first_pid = decoder.pid
    decoder.decode(AudioRef(files["good"]))
    assert decoder.pid == first_pid and decoder.restarts == 0
    assert decoder.max_rss_mb > 0


@pytest.mark.parametrize("kind,how", [("segfault", "SIGSEGV"), ("abort", "SIGABRT"), ("exit", "exit status 3")])
def test_a_dying_decoder_is_one_record_and_restarts(decoder, files, kind, how):
    decoder.decode(AudioRef(files["good"]))
    pid = decoder.pid
    error = _reason(decoder, files[kind])
    assert error.reason == failures.DECODER_CRASH and how in error.message and error.uri == files[kind]
    assert decoder.restarts == 1
    decoded, _ = decoder.decode(AudioRef(files["good"]))  # the next file gets a fresh process
    assert decoded.audio.shape == (22050,) and decoder.pid != pid


def test_a_hanging_decoder_is_killed_at_the_time_limit(decoder, files):
    decoder.decode(AudioRef(files["good"]))
    start = time.monotonic()
    error = _reason(decoder, files["hang"])
    elapsed = time.monotonic() - start
    assert error.reason == failures.TIMEOUT
    assert TIMEOUT_S <= elapsed < TIMEOUT_S + isolation.GRACE_S + 3
    decoded, _ = decoder.decode(AudioRef(files["good"]))
    assert decoded.duration_s == pytest.approx(1.0)


def test_python_errors_in_the_child_are_records_without_a_restart(decoder, files):
    decoder.decode(AudioRef(files["good"]))
    pid = decoder.pid
    bug = _reason(decoder, files["bug"])
    assert bug.reason == failures.DECODE_ERROR and "KeyError" in bug.message
    assert _reason(decoder, files["memory"]).reason == failures.OUT_OF_MEMORY
    said = _reason(decoder, files["reason"])
    assert (said.reason, said.message) == (failures.DECODE_ERROR, "a decoder said no")
    assert _reason(decoder, files["empty"]).reason == failures.EMPTY
    assert decoder.pid == pid and decoder.restarts == 0


def test_a_bad_decoder_path_fails_loudly():
    d = isolation.ProcessDecoder(DecodeConfig(decoder="no_such_module_here:decode"))
    with pytest.raises(RuntimeError, match="ModuleNotFoundError"):
        d.decode(AudioRef("/nonexistent.wav"))
    with pytest.raises(RuntimeError, match="not a FileDecoder subclass"):
        isolation.ProcessDecoder(DecodeConfig(decoder="json:dumps")).decode(AudioRef("/nonexistent.wav"))
    with pytest.raises(ValueError, match="module:Class"):
        DecodeConfig(decoder="not a path")


def test_answers_are_checked_not_trusted():
    good = {"ok": True, "samples": 10, "sample_rate": 16000, "source_sample_rate": 16000, "source_channels": 1,
            "source_format": "wav", "notes": [], "max_rss_mb": 1.0}
    isolation._check_whole(good, DecodeConfig())
    for bad in ({"samples": -1}, {"samples": 1 << 40}, {"samples": "10"}, {"sample_rate": 0},
                {"notes": ["../x"]}, {"notes": "x"}, {"source_format": None}, {"max_rss_mb": "1"}):
        with pytest.raises(isolation._ProtocolError):
            isolation._check_whole({**good, **bad}, DecodeConfig())


def test_requests_in_flight_are_answered_in_turn(decoder, files):
    """submit() returns at once; collect() gets that file's answer, a failure included."""
    decoder.submit(AudioRef(files["loud"]))
    assert decoder.busy
    with pytest.raises(RuntimeError, match="in flight"):
        decoder.submit(AudioRef(files["good"]))
    decoded, notes = decoder.collect()
    assert not decoder.busy and notes == ("out_of_range_scaled",) and decoded.source.uri == files["loud"]
    decoder.submit(AudioRef(files["bug"]))
    with pytest.raises(AudiotokError, match="KeyError"):
        decoder.collect()
    decoder.submit(AudioRef(files["good"]))
    assert decoder.collect()[0].audio.shape == (22050,)


@pytest.mark.parametrize("processes", [1, 3])
def test_decode_stage_under_beam_turns_faults_into_records(files, processes):
    refs = [AudioRef(files[k]) for k in ("good", "segfault", "hang", "bug", "loud", "good")]
    with TestPipeline(runner="FnApiRunner") as p:
        out = p | beam.Create(refs) | DecodeAudio(dataclasses.replace(FAULTS, decoder_processes=processes))
        assert_that(out.decoded | beam.Map(lambda d: d.source.uri.rsplit("/", 1)[1]),
                    equal_to(["good.flac", "loud.wav", "good.flac"]), label="decoded")
        assert_that(out.failures | beam.Map(lambda f: (f.uri.rsplit("/", 1)[1], f.reason, f.stage)),
                    equal_to([("segfault.wav", "decoder_crash", "decode"), ("hang.wav", "timeout", "decode"),
                              ("bug.wav", "decode_error", "decode")]), label="failures")


def test_spawn_start_method_works_too(files):
    d = isolation.ProcessDecoder(DecodeConfig(), start_method="spawn")
    try:
        decoded, _ = d.decode(AudioRef(files["good"]))
        assert decoded.audio.shape == (22050,)
    finally:
        d.close()
    assert d.pid is None


@pytest.mark.parametrize("how", ["script", "stdin"])
def test_the_parents_main_script_is_not_run_again_in_the_decoder(files, tmp_path, how):
    """A user's script without a __main__ guard, or one piped to python, decodes normally: the
    decoder process does not re-import the parent's main (it once re-ran the whole job in the
    forkserver, or failed every file when main was stdin)."""
    import os
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = tmp_path / "user_job.py"
    script.write_text(
        "print('MAIN RAN', flush=True)\n"
        "from audiotok.transforms import isolation\n"
        "from audiotok.transforms.decode import DecodeConfig\n"
        "from audiotok.transforms.records import AudioRef\n"
        "d = isolation.ProcessDecoder(DecodeConfig(isolation='process'))\n"
        f"decoded, _ = d.decode(AudioRef({files['good']!r}))\n"
        "print('DECODED', decoded.audio.shape[-1], flush=True)\n"
        "d.close()\n")
    env = {**os.environ, "PYTHONPATH": repo}
    if how == "script":
        done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    else:
        done = subprocess.run([sys.executable, "-"], input=script.read_text(), env=env, capture_output=True,
                              text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("MAIN RAN") == 1, done.stdout
    assert "DECODED 22050" in done.stdout


def test_the_decoder_process_imports_no_beam():
    """The forkserver preloads the decoding modules; Beam among them cost every worker process
    2.5 s of start-up for a child that never uses it."""
    import os
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    code = ("import sys; import audiotok.transforms.isolation, audiotok.transforms.decode; "
            "print(sorted(m for m in ('apache_beam', 'torch', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="VmHWM is Linux's")
def test_peak_rss_is_the_process_own_not_its_parents():
    """A process started by subprocess inherits its parent's peak in ``ru_maxrss``; the figure the
    memory checks read (``peak_rss_mb``) is the child's own."""
    import subprocess
    import sys

    ballast = np.ones(400 * 1024 * 1024 // 8)  # 400 MB resident in this (the parent) process
    code = ("import resource; from audiotok.transforms import isolation; "
            "print(isolation.peak_rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    own, inherited = map(float, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                               check=True).stdout.split())
    del ballast
    assert own < 350 < inherited, (own, inherited)  # the second: what the check would have read
