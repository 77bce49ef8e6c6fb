"""Fault injection: kill -9 at the publish points, a full disk, two refreshes at once, the object
store going away mid-run, a read-only output.

Each test asserts, after the fault and after the recovery a user would do (run the refresh
again): nothing outside the dataset was touched, the live dataset verifies at every step, and
every input is in it exactly once (as samples, or as one live dead letter). The mistakes that
need no second process (a folder that is no dataset, an input listed twice, a FIFO, an output
inside its input) are in tests/pipelines/test_reliability.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from audio_fixtures import synth_speechlike, write_audio
from audiotok.pipelines import tokenize as job
from audiotok.pipelines import verify
from audiotok.runners import profiles
from audiotok.transforms import dataset, lease, storage
from audiotok.transforms.decode import DecodeConfig, FileDecoder
from audiotok.transforms.match import MatchConfig
from audiotok.transforms.segment import SegmentConfig
from audiotok.transforms.shards import ShardConfig
from audiotok.transforms.tokenize import TokenizeConfig
from emulators import REPO_ROOT, MotoS3, TcpProxy, upload_tree

pytestmark = pytest.mark.slow

DRIVER = os.path.join(REPO_ROOT, "tests", "fault_driver.py")
FLAGS = ["--tokenizer", "logmel[n_mels=16]", "--segment-s", "1", "--min-segment-s", "0.2", "--decode-isolation",
         "none", "--shard-max-samples", "2", "--files-per-bucket", "1", "--runner=FnApiRunner"]


def make_inputs(root: Path, names: list[str], seed: int = 0) -> None:
    for i, name in enumerate(names):
        write_audio(root / name, synth_speechlike(1.0 + 0.4 * (i % 3), 16000, seed=seed + i), 16000, "flac")


def job_config(inp: Path, out: Path | str, **kw) -> job.JobConfig:
    return job.JobConfig(output=str(out), match=MatchConfig(patterns=(f"{inp}/*",)),
                         decode=DecodeConfig(isolation="none"), segment=SegmentConfig(segment_s=1.0, min_segment_s=0.2),
                         tokenize=TokenizeConfig(specs="logmel[n_mels=16]"),
                         shards=ShardConfig(max_samples=2, files_per_bucket=1), **kw)


def run(inp: Path, out: Path | str, **kw):
    return job.run(job_config(inp, out, **kw), profiles.pipeline_options("direct", ["--runner=FnApiRunner"]))


def driver(point: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, DRIVER, point, "--", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO_ROOT)


def tree(root: Path, skip: Path | None = None) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file() and not (skip and (p == skip or skip in p.parents))}


def assert_sound(out: Path | str, inputs: set[str]) -> None:
    """The live dataset verifies, its keys are unique, and every input is in it exactly once:
    as samples or as live dead letters, never both, never missing."""
    out = str(out)
    report = verify.verify_dataset(out)
    assert report.ok(), verify.format_report(report)
    index = dataset.read_index(out)
    state = dict(dataset.state_entries(out, index))
    keys, sources = [], set()
    for row, key, members in live_samples(out):
        keys.append(key)
        sources.add(json.loads(members["json"])["source"]["uri"])
    failed = set()
    for row in dataset.failure_rows(out, index):
        run_ = int(row["url"].split("/")[1][1:])
        for line in storage.read_bytes(storage.join(out, row["url"])).decode().splitlines():
            record = json.loads(line)
            if dataset.failure_is_live(run_, state.get(record["uri"]), index["dataset_version"]):
                failed.add(record["uri"])
    assert len(keys) == len(set(keys)) == index["totals"]["samples"]
    assert not sources & failed
    assert sources | failed == inputs, (sorted(inputs - sources - failed), sorted((sources | failed) - inputs))
    assert {uri for uri, e in state.items() if "fingerprint" in e or "pending" in e} == inputs


def live_samples(out: str):
    """(shard row, key, {member suffix: bytes}) of each live sample, read through storage (any URL)."""
    for row in dataset.shard_rows(out):
        data = storage.read_bytes(storage.join(out, row["url"]))
        samples: dict[str, dict[str, bytes]] = {}
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar.getmembers():
                key, suffix = member.name.split(".", 1)
                samples.setdefault(key, {})[suffix] = tar.extractfile(member).read()
        for key, members in samples.items():
            if dataset.is_live(key, row):
                yield row, key, members


def live_arrays(out: Path | str) -> dict[tuple[str, str], np.ndarray]:
    """(stem, start ms) -> the log-mel array of each live sample (keys lose their URI hash)."""
    found = {}
    for _, key, members in live_samples(str(out)):
        stem, _, start_ms = key.rsplit("-", 2)
        found[(stem, start_ms)] = np.load(io.BytesIO(members["logmel.npy"]), allow_pickle=False)
    return found


def assert_same_samples(out: Path | str, reference: Path | str) -> None:
    """The same samples as an uninterrupted run, with the same tokens (log-mel values within
    float16 rounding: a segment batched with other segments may differ in the last bits)."""
    got, want = live_arrays(out), live_arrays(reference)
    assert sorted(got) == sorted(want)
    for k in want:
        np.testing.assert_allclose(got[k].astype(np.float32), want[k].astype(np.float32), rtol=1e-2, atol=1e-2)


# ------------------------------------------------------------------ kill -9 at the publish points


@pytest.mark.timeout(600)
@pytest.mark.parametrize("point", ["kill:shard-rename", "kill:state", "kill:index", "kill:card"])
def test_kill_9_while_a_refresh_publishes(tmp_path, point):
    inp, out = tmp_path / "in", tmp_path / "out"
    make_inputs(inp, ["a.flac", "b.flac", "c.flac"])
    run(inp, out)
    before_index = (out / "index.json").read_bytes()
    make_inputs(inp, ["d.flac", "e.flac"], seed=10)
    (inp / "a.flac").unlink()
    outside = tree(tmp_path, skip=out)
    proc = driver(point, "tokenize", "--input", f"{inp}/*", "--output", str(out), "--incremental", *FLAGS)
    assert proc.returncode == -9, proc.stderr[-3000:]
    holder = lease.read_holder(str(out))
    assert holder is not None and holder.holder_is_gone()  # left behind, and known to be stale
    if point == "kill:card":
        assert json.loads((out / "index.json").read_bytes())["dataset_version"] == 2
    else:
        assert (out / "index.json").read_bytes() == before_index  # the previous version is live, whole
    report = verify.verify_dataset(str(out))
    assert report.ok(), verify.format_report(report)
    index, counters, _ = run(inp, out, incremental=True)  # what a user does next: run it again
    assert index["dataset_version"] == 2 or (point == "kill:card" and index["dataset_version"] == 2)
    inputs = {str(inp / n) for n in ("b.flac", "c.flac", "d.flac", "e.flac")}
    assert_sound(out, inputs)
    assert tree(tmp_path, skip=out) == outside
    reference = tmp_path / "reference"
    run(inp, reference)
    assert_same_samples(out, reference)


@pytest.mark.timeout(600)
def test_kill_9_in_a_first_run_and_in_an_overwrite(tmp_path):
    """A first run killed before its index: nothing is live, and the rerun starts clean. An
    --overwrite killed before it switches the index: the old version is live and whole."""
    inp, out = tmp_path / "in", tmp_path / "out"
    make_inputs(inp, ["a.flac", "b.flac"])
    proc = driver("kill:index", "tokenize", "--input", f"{inp}/*", "--output", str(out), *FLAGS)
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert not (out / "index.json").exists() and (out / dataset.MARKER_NAME).exists()
    run(inp, out)  # the same command again: the output is its own (marked) and holds no index
    assert_sound(out, {str(inp / "a.flac"), str(inp / "b.flac")})
    old = json.loads((out / "index.json").read_text())
    other = tmp_path / "other"
    make_inputs(other, ["x.flac"], seed=30)
    proc = driver("kill:index", "tokenize", "--input", f"{other}/*", "--output", str(out), "--overwrite", *FLAGS)
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert json.loads((out / "index.json").read_text()) == old
    assert_sound(out, {str(inp / "a.flac"), str(inp / "b.flac")})
    for row in dataset.shard_rows(str(out), old):  # a reader holding the old index reads every shard
        assert sum(1 for _ in wds.WebDataset(str(out / row["url"]), shardshuffle=False)) == row["samples"]
    index, _, _ = run(other, out, overwrite=True)
    assert index["dataset_version"] == 2
    assert_sound(out, {str(other / "x.flac")})


# ------------------------------------------------------------------ a full disk


def _can_mount_tmpfs(where: Path) -> bool:
    where.mkdir(exist_ok=True)
    try:
        proc = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs '{where}'"],
                              capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


@pytest.mark.timeout(600)
def test_a_full_disk_while_publishing_leaves_the_previous_version(tmp_path):
    """The filesystem holding the dataset fills up just before the index is written (a small
    tmpfs in a private mount namespace; an injected ENOSPC where none can be mounted): the
    previous index is intact and verifies, and once there is room the refresh completes."""
    inp, extra, mnt, results = tmp_path / "in", tmp_path / "extra", tmp_path / "mnt", tmp_path / "results"
    make_inputs(inp, ["a.flac", "b.flac"])
    make_inputs(extra, ["c.flac", "d.flac"], seed=20)
    results.mkdir()
    args = [DRIVER, "full-disk", "--mount", str(mnt), "--input", str(inp), "--extra", str(extra), "--report",
            str(results / "report.json")]
    cli_args = ["--input", f"{inp}/*", *FLAGS, "--max-failure-fraction", "1"]
    if _can_mount_tmpfs(mnt):
        script = f"mount -t tmpfs -o size=8m tmpfs '{mnt}' && exec \"$0\" \"$@\""
        command = ["unshare", "-m", "sh", "-c", script, sys.executable, *args, "--", *cli_args]
    else:
        command = [sys.executable, *args, "--inject", "--", *cli_args]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=500, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((results / "report.json").read_text())
    assert report["first"] == 0
    assert "No space left on device" in str(report["full"]) or report["full"] != 0
    assert report["index_after_full"] == 1 and report["verify_after_full"] == []
    assert report["again"] == 0 and report["verify_after_again"] == []
    final = results / "final"
    # The copy names the inputs as they were; check the index against the shards there.
    assert verify.verify_dataset(str(final)).ok()
    index = json.loads((final / "index.json").read_text())
    assert index["dataset_version"] == 2 and index["totals"]["inputs"] == 4 and index["totals"]["failures"] == 0
    keys = [s["__key__"] for row in dataset.shard_rows(str(final), index)
            for s in wds.WebDataset(str(final / row["url"]), shardshuffle=False)
            if dataset.is_live(s["__key__"], row)]
    assert len(keys) == len(set(keys)) == index["totals"]["samples"]


# ------------------------------------------------------------------ two refreshes at once


@pytest.mark.timeout(600)
def test_two_refreshes_at_once(tmp_path):
    """Two schedulers fire together: one refreshes, the other is refused with exit status 75
    (with --wait-for-lock it would wait); the dataset holds every input once."""
    inp, out = tmp_path / "in", tmp_path / "out"
    make_inputs(inp, ["a.flac", "b.flac"])
    run(inp, out)
    make_inputs(inp, ["c.flac", "d.flac", "e.flac"], seed=40)
    argv = [sys.executable, DRIVER, "none", "--", "tokenize", "--input", f"{inp}/*", "--output", str(out),
            "--incremental", *FLAGS]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
             for _ in range(2)]
    outcomes = [(p.wait(timeout=400), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in outcomes)
    assert codes == [0, job.EXIT_BUSY], [err[-2000:] for _, err in outcomes]
    refused = next(err for code, err in outcomes if code == job.EXIT_BUSY)
    assert "being written by another run" in refused and "--wait-for-lock" in refused
    index = dataset.read_index(str(out))
    assert index["dataset_version"] == 2
    assert_sound(out, {str(inp / f"{n}.flac") for n in "abcde"})
    _, counters, _ = run(inp, out, incremental=True, wait_for_lock_s=30)
    assert counters.get("files_ok", 0) == 0 and dataset.read_index(str(out))["dataset_version"] == 2


# ------------------------------------------------------------------ the object store goes away


_PROXY: list[TcpProxy] = []
_DECODES = {"n": 0, "stop_at": 0, "down_s": 0.0}


class OutageDecoder(FileDecoder):
    """The decoder, except that it takes the object store away (stops the proxy in front of
    it) before the ``stop_at``-th file, and brings it back ``down_s`` seconds later (never,
    when negative)."""

    def open(self, ref, config, split=None):
        _DECODES["n"] += 1
        if _DECODES["n"] == _DECODES["stop_at"] and _PROXY:
            proxy = _PROXY[0]
            proxy.stop()
            if _DECODES["down_s"] >= 0:
                threading.Timer(_DECODES["down_s"], proxy.start).start()
        return super().open(ref, config, split)


@pytest.fixture
def flaky_s3(monkeypatch):
    with MotoS3() as s3:
        with TcpProxy(s3.port) as proxy:
            env = {**s3.env, "AWS_ENDPOINT_URL": proxy.url}
            for k, v in env.items():
                monkeypatch.setenv(k, v)
            _PROXY[:] = [proxy]
            s3.make_bucket("corpus")
            yield proxy
            _PROXY.clear()
            if not proxy.up:
                proxy.start()


def _s3_config(out, **kw) -> job.JobConfig:
    return job.JobConfig(output=str(out), match=MatchConfig(patterns=("s3://corpus/in/*",)),
                         decode=DecodeConfig(isolation="none", decoder="test_faults:OutageDecoder"),
                         segment=SegmentConfig(segment_s=1.0, min_segment_s=0.2),
                         tokenize=TokenizeConfig(specs="logmel[n_mels=16]"), max_failure_fraction=1.0, **kw)


def _run_s3(cfg):
    return job.run(cfg, profiles.pipeline_options("direct", ["--runner=FnApiRunner"]))


@pytest.mark.timeout(600)
def test_an_object_store_outage_shorter_than_the_retries_loses_nothing(tmp_path, flaky_s3, monkeypatch):
    local = tmp_path / "local"
    make_inputs(local, [f"f{i}.flac" for i in range(6)])
    upload_tree(str(local), "s3://corpus/in")
    monkeypatch.setenv(storage.RETRY_ENV, "60")
    _DECODES.update(n=0, stop_at=3, down_s=4.0)
    index, counters, _ = _run_s3(_s3_config("s3://corpus/out"))
    assert counters["files_ok"] == 6 and index["totals"]["failures"] == 0
    assert_sound("s3://corpus/out", {f"s3://corpus/in/f{i}.flac" for i in range(6)})


@pytest.mark.timeout(600)
def test_an_object_store_down_for_the_rest_of_the_run_is_retried_by_the_next_refresh(tmp_path, flaky_s3,
                                                                                       monkeypatch, caplog):
    local = tmp_path / "local"
    make_inputs(local, [f"f{i}.flac" for i in range(6)])
    upload_tree(str(local), "s3://corpus/in")
    monkeypatch.setenv(storage.RETRY_ENV, "1")
    out = tmp_path / "out"
    _DECODES.update(n=0, stop_at=4, down_s=-1)  # down from the 4th file on, until the test brings it back
    index, counters, _ = _run_s3(_s3_config(out))
    inputs = {f"s3://corpus/in/f{i}.flac" for i in range(6)}
    assert counters["files_ok"] == 3 and index["totals"]["failures_by_reason"] == {"read_error": 3}
    state = dict(dataset.state_entries(str(out), index))
    pending = [uri for uri, e in state.items() if "pending" in e]
    assert len(pending) == 3 and sum("fingerprint" in e for e in state.values()) == 3  # not counted as processed
    records = [json.loads(line) for row in dataset.failure_rows(str(out), index)
               for line in (out / row["url"]).read_text().splitlines()]
    assert all(r["transient"] for r in records)
    assert "a bug" not in caplog.text
    assert_sound(out, inputs)
    flaky_s3.start()
    _DECODES.update(n=0, stop_at=0)
    index, counters, _ = _run_s3(_s3_config(out, incremental=True))
    assert counters["files_ok"] == 3 and index["totals"]["failures"] == 0  # exactly the three, once
    assert not any("pending" in e for _, e in dataset.state_entries(str(out), index))
    assert_sound(out, inputs)
    reference = tmp_path / "reference"
    _run_s3(_s3_config(reference))
    assert_same_samples(out, reference)


# ------------------------------------------------------------------ a read-only output


@pytest.mark.timeout(300)
def test_a_read_only_output_is_refused_before_anything_is_decoded(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    make_inputs(inp, ["a.flac"])
    run(inp, out)
    make_inputs(inp, ["b.flac"], seed=50)
    before = tree(out)
    cli = [sys.executable, "-m", "audiotok.pipelines.cli", "tokenize", "--input", f"{inp}/*", "--output", str(out),
           "--incremental", *FLAGS]
    script = f"mount --bind '{out}' '{out}' && mount -o remount,bind,ro '{out}' && exec \"$0\" \"$@\""
    try:
        proc = subprocess.run(["unshare", "-m", "sh", "-c", script, *cli], capture_output=True, text=True,
                              timeout=200, cwd=REPO_ROOT)
    except OSError as e:
        pytest.skip(f"unshare: {e}")
    if "mount" in proc.stderr and "permission denied" in proc.stderr.lower() and proc.returncode != 1:
        pytest.skip(f"cannot mount read-only here: {proc.stderr[-300:]}")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "cannot be written" in proc.stderr and "Read-only file system" in proc.stderr
    assert "loaded tokenizers" not in proc.stderr and "decoded" not in proc.stderr  # nothing ran
    assert tree(out) == before
