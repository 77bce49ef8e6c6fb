"""The tokenize job on Spark and Flink job servers beside the in-process run, for
``tests/runners/test_spark_flink.py``: one process runs every run of a plan, so each job server starts once.

    python tests/job_server_runs.py PLAN.json      # writes the report named in the plan

Run it inside a network namespace that has only loopback (:func:`loopback_only`): Beam's
Java job servers, the Python worker handlers and Spark's UI bind every interface.

A plan names the corpus, the tokenizers, the runs (profile, Beam flags, an external worker
pool or not) and a change to the corpus. Every run tokenizes the corpus into
``OUTPUTS/first/NAME``; then the change is made (files added and deleted), each dataset is
copied to ``OUTPUTS/refresh/NAME`` and refreshed there with ``--incremental``. The report
holds, per run and step, whether it finished, its Beam counters and its wall time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repo and tests/ on the path, as under pytest
    sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

TESTS_DIR = str(Path(__file__).resolve().parent)
STEPS = ("first", "refresh")


@dataclasses.dataclass(frozen=True)
class Run:
    """One way of running the job.

    Attributes:
        name: the output folder's name.
        profile: a runner profile.
        flags: Beam flags.
        worker_pool: start Beam's external worker pool and send the SDK workers there
            (separate processes that get no pipeline options, as on a cluster).
    """

    name: str
    profile: str
    flags: tuple[str, ...] = ()
    worker_pool: bool = False


@dataclasses.dataclass(frozen=True)
class Plan:
    """What to run (see the module docstring). Paths are absolute."""

    corpus: str
    manifest: str
    tokenizers: str
    outputs: str
    report: str
    runs: tuple[Run, ...]
    add: dict[str, str]  # corpus path -> file whose bytes it gets
    delete: tuple[str, ...]  # corpus paths

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        raw = json.loads(text)
        raw["runs"] = tuple(Run(**{**r, "flags": tuple(r["flags"])}) for r in raw["runs"])
        raw["delete"] = tuple(raw["delete"])
        return cls(**raw)


def loopback_only(argv: list[str]) -> list[str]:
    """``argv`` run in a new network namespace with only loopback, up (needs root)."""
    return ["unshare", "--net", "bash", "-c", 'ip link set lo up && exec "$0" "$@"', *argv]


def job_config(plan: Plan, output: str, incremental: bool):
    """The job every run does: the corpus and its manifest, the decoder that crashes and hangs
    on the fault files in isolated processes, small shards in several groups."""
    import hostile_corpus

    from audiotok.pipelines import tokenize
    from audiotok.transforms.decode import DecodeConfig
    from audiotok.transforms.match import MatchConfig
    from audiotok.transforms.segment import SegmentConfig
    from audiotok.transforms.shards import ShardConfig
    from audiotok.transforms.tokenize import TokenizeConfig

    decoder = f"hostile_corpus:{hostile_corpus.FaultyDecoder.__name__}"
    return tokenize.JobConfig(
        output=output, match=MatchConfig(patterns=(os.path.join(plan.corpus, "**"),), manifests=(plan.manifest,)),
        decode=DecodeConfig(isolation="process", timeout_s=4.0, decoder=decoder),
        segment=SegmentConfig(segment_s=30.0, min_segment_s=0.5), tokenize=TokenizeConfig(specs=plan.tokenizers),
        shards=ShardConfig(max_samples=20, files_per_bucket=16), overwrite=not incremental, incremental=incremental,
        max_failure_fraction=0.9)


def run_one(plan: Plan, run: Run, output: str, incremental: bool) -> dict:
    """Runs the job once; returns what the report says of it."""
    from audiotok.pipelines import tokenize
    from audiotok.runners import portable, profiles

    start = time.monotonic()
    try:
        flags = list(run.flags)
        if run.worker_pool:
            # The pool's workers import the fault-injecting decoder from tests/.
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (TESTS_DIR, os.environ.get("PYTHONPATH"))
                                                               if p)}
            with portable.worker_pool(env=env) as pool:
                flags += ["--environment_type=EXTERNAL", f"--environment_config=localhost:{pool.port}"]
                _, counters, _ = tokenize.run(job_config(plan, output, incremental),
                                              profiles.pipeline_options(run.profile, flags))
                # The pool logs each SDK worker process it starts.
                workers = pool.log_tail(1 << 20).count("Starting worker with command")
        else:
            _, counters, _ = tokenize.run(job_config(plan, output, incremental),
                                          profiles.pipeline_options(run.profile, flags))
            workers = 0
        return {"ok": True, "counters": counters, "worker_processes": workers,
                "wall_s": round(time.monotonic() - start, 1)}
    except BaseException as e:  # noqa: BLE001 - the report carries it; the other runs go on
        if isinstance(e, KeyboardInterrupt):
            raise
        return {"ok": False, "error": "".join(traceback.format_exception(e))[-6000:],
                "wall_s": round(time.monotonic() - start, 1)}


def change_corpus(plan: Plan) -> None:
    for path in plan.delete:
        os.remove(path)
    for path, source in plan.add.items():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        shutil.copyfile(source, path)


def execute(plan: Plan) -> dict:
    """Every run of ``plan``, first and refreshed; returns the report (also written to plan.report)."""
    report: dict = {step: {} for step in STEPS}
    for run in plan.runs:
        report["first"][run.name] = run_one(plan, run, os.path.join(plan.outputs, "first", run.name), False)
        _write(plan.report, report)
    change_corpus(plan)
    for run in plan.runs:
        first = os.path.join(plan.outputs, "first", run.name)
        refreshed = os.path.join(plan.outputs, "refresh", run.name)
        if not report["first"][run.name]["ok"]:
            report["refresh"][run.name] = {"ok": False, "error": "the first run failed", "wall_s": 0.0}
            continue
        shutil.copytree(first, refreshed)
        report["refresh"][run.name] = run_one(plan, run, refreshed, True)
        _write(plan.report, report)
    return report


def _write(path: str, report: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("plan", type=Path)
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    report = execute(Plan.from_json(args.plan.read_text(encoding="utf-8")))
    return 0 if all(r["ok"] for step in report.values() for r in step.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
