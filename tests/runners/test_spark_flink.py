"""The tokenize job on Spark and Flink, byte for byte what the in-process run writes.

Beam's Spark (``local[2]``) and Flink (``[local]``) job servers, fetched or assembled by
``audiotok.runners.jobservers`` (Maven; one download per machine, then the cache), run the
job over the example corpus plus the hostile corpus (dead letters of every stage, a decoder
that crashes and one that hangs), with log-mel beside a tiny EnCodec checkpoint; then, after
a file is added and two are deleted, an ``--incremental`` refresh. Spark runs once more with
its Python workers in separate processes (an external worker pool: no pipeline options, as
on a cluster). Every dataset (shards, failures, state, index, vocabulary, card) must be
byte-identical to the in-process run's, after the first run and after the refresh.

Everything runs in one process inside a network namespace with only loopback (the job
servers bind every interface), which needs root. Where Java, Maven's libraries or the
namespace cannot be had, the tests skip with the reason (Maven's own answer included).
Run them alone with ``pytest -m spark_flink``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import hostile_corpus as hc
from emulators import EXAMPLE_CORPUS, dataset_digest
from audiotok.runners import jobservers
from audiotok.transforms import dataset
from job_server_runs import STEPS, Plan, Run, loopback_only

pytestmark = [pytest.mark.slow, pytest.mark.spark_flink, pytest.mark.timeout(1500)]

DRIVER = Path(__file__).resolve().parents[1] / "job_server_runs.py"
REFERENCE = "direct"
FETCH_TIMEOUT_S = 420
RUNS_TIMEOUT_S = 1200


@pytest.fixture(scope="module")
def job_servers() -> dict[str, Path]:
    """runner -> its job-server jar (the SDK's, else the assembled test job server); both
    fetched at once. Skips with the reason where Java, Maven or the namespace is missing."""
    if shutil.which("java") is None:
        pytest.skip("java is not installed")
    probe = subprocess.run(loopback_only(["true"]), capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"no loopback-only network namespace here (root needed): {probe.stderr.strip()[-300:]}")

    def fetch(runner):
        try:
            return jobservers.fetch_job_server(runner, timeout_s=FETCH_TIMEOUT_S)[0]
        except jobservers.JarUnavailable as e:
            return e

    with ThreadPoolExecutor(len(jobservers.RUNNERS)) as pool:
        found = dict(zip(jobservers.RUNNERS, pool.map(fetch, jobservers.RUNNERS)))
    problems = [f"{runner}: {jar}" for runner, jar in found.items() if isinstance(jar, Exception)]
    if problems:
        pytest.skip("; ".join(problems))
    return found


def _plan(base: Path, jars: dict[str, Path]) -> Plan:
    import tiny_models

    corpus = base / "in"
    shutil.copytree(os.path.join(EXAMPLE_CORPUS, "en"), corpus / "clean")
    hc.write_corpus(corpus / "hostile", faults=True, long_files=False)
    staged = base / "staged.wav"
    staged.write_bytes(hc.wav16(hc.speech(3.0, seed=21), 16000))
    encodec = tiny_models.save_encodec(base / "encodec")
    runs = (
        Run(REFERENCE, "direct"),
        Run("spark", "spark", (f"--spark_job_server_jar={jars['spark']}",)),
        Run("spark-worker-pool", "spark", (f"--spark_job_server_jar={jars['spark']}",), worker_pool=True),
        Run("flink", "flink", (f"--flink_job_server_jar={jars['flink']}",)),
    )
    return Plan(corpus=str(corpus), manifest=str(base / "manifest.jsonl"),
                tokenizers=f"logmel,encodec-24k[model={encodec}]", outputs=str(base / "out"),
                report=str(base / "report.json"), runs=runs,
                add={str(corpus / "clean" / "added" / "new_0001.wav"): str(staged)},
                delete=(str(corpus / "clean" / "a" / "us_0001.wav"), str(corpus / "hostile" / "bad" / "truncated.wav")))


@pytest.fixture(scope="module")
def runs(job_servers, tmp_path_factory) -> tuple[Plan, dict]:
    """Every run of the plan, in one process in a loopback-only namespace: (plan, report)."""
    base = tmp_path_factory.mktemp("spark-flink")
    # write_corpus puts the hostile manifest beside its root: move it where the plan expects it.
    plan = _plan(base, job_servers)
    os.replace(Path(plan.corpus) / "manifest.jsonl", plan.manifest)
    plan_file = base / "plan.json"
    plan_file.write_text(plan.to_json(), encoding="utf-8")
    log = base / "runs.log"
    with open(log, "wb") as out:
        done = subprocess.run(loopback_only([sys.executable, str(DRIVER), str(plan_file)]), stdout=out,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=RUNS_TIMEOUT_S)
    if not Path(plan.report).is_file():
        pytest.fail(f"the runs wrote no report (exit {done.returncode}): {log.read_text(errors='replace')[-5000:]}")
    report = json.loads(Path(plan.report).read_text(encoding="utf-8"))
    print("\n" + "; ".join(f"{step} {name}: {r['wall_s']} s" for step in STEPS for name, r in report[step].items()))
    return plan, report


def tree_digest(root: str) -> dict[str, str]:
    """Every file under ``root`` -> sha256 of its bytes."""
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _output(plan: Plan, step: str, name: str) -> str:
    return os.path.join(plan.outputs, step, name)


# Counters that count inputs and outcomes, not bundles or batches (which runners cut differently).
COMPARED_COUNTERS = ("files_matched", "files_ok", "failures", "segments", "samples", "shards")


def _compared(counters: dict) -> dict:
    return {k: v for k, v in counters.items() if k in COMPARED_COUNTERS or k.startswith("failures_")}


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("name", ["spark", "spark-worker-pool", "flink"])
def test_job_server_run_writes_what_the_in_process_run_writes(runs, name, step):
    plan, report = runs
    got, want = report[step][name], report[step][REFERENCE]
    assert want["ok"], want["error"]
    assert got["ok"], got["error"]
    expected, actual = tree_digest(_output(plan, step, REFERENCE)), tree_digest(_output(plan, step, name))
    if actual != expected:
        differ = sorted(k for k in expected.keys() | actual.keys() if expected.get(k) != actual.get(k))
        same_tokens = dataset_digest(_output(plan, step, name)) == dataset_digest(_output(plan, step, REFERENCE))
        pytest.fail(f"files that differ from the in-process run: {differ} (tokens the same: {same_tokens})")
    assert _compared(got["counters"]) == _compared(want["counters"])
    if name == "spark-worker-pool":
        assert got["worker_processes"] >= 1  # the SDK workers were the pool's processes, not this one's threads


def test_the_compared_runs_cover_dead_letters_codecs_and_a_refresh(runs):
    """What the comparisons above stand on: the reference run holds every kind of outcome."""
    plan, report = runs
    first = dataset.read_index(_output(plan, "first", REFERENCE))
    refreshed = dataset.read_index(_output(plan, "refresh", REFERENCE))
    reasons = first["totals"]["failures_by_reason"]
    for reason in ("decoder_crash", "timeout", "truncated", "unsupported_format", "bad_name", "bad_manifest",
                   "too_short"):
        assert reasons.get(reason), (reason, reasons)
    assert set(first["totals"]["tokens"]) == {"logmel", "encodec-24k"}
    assert len(list(dataset.shard_rows(_output(plan, "first", REFERENCE), first))) > 2  # several groups
    assert refreshed["dataset_version"] == 2
    assert refreshed["totals"]["failures_by_reason"]["truncated"] == reasons["truncated"] - 1
    state = dict(dataset.state_entries(_output(plan, "refresh", REFERENCE), refreshed))
    assert {os.path.basename(uri) for uri, e in state.items() if "deleted" in e} == {"us_0001.wav", "truncated.wav"}
    assert any(uri.endswith("new_0001.wav") for uri, e in state.items() if "fingerprint" in e)
    assert report["refresh"][REFERENCE]["counters"]["inputs_new"] == 1
