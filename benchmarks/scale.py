"""The job's bookkeeping at corpus scale, simulated: no audio, no cloud.

A synthetic fsspec filesystem (``synth://``, :class:`SynthFileSystem`) holds ``--inputs N``
files, 1000 per folder, each with a size and a version marker (a GCS-like ``generation``),
made up from its name: nothing is stored. The real job runs over it (``pipelines/tokenize``:
``plan_run``, then ``build`` on the in-process runner): fanned-out listing, the join with the
previous state, the state and rows parts, the index; only the audio stages are replaced by a
stub that makes one small sample per input (0.1 s of 8-band log-mel, from the input's URI),
which the real shard writers write. Three scenarios run one after the other on one output
folder, each in a fresh Python process:

* ``first``: a fresh dataset;
* ``noop``: a refresh where nothing changed (publishes nothing);
* ``changed``: a refresh where every 100th input has a new size and generation (1 %).

Per scenario the JSON holds ``wall_s`` per stage (``plan``: reading the previous index and
cleaning; ``pipeline``: the Beam job, and within it each bookkeeping step's processing time
as the runner measured it; ``read_index``), ``peak_rss_mb`` per process role (``imports``: the
floor; ``launcher``: planning and reading the result; ``pipeline``: the in-process runner with
every step, which is what a local run needs), ``state_bytes``, ``index_bytes`` (``index.json``)
and ``rows_bytes`` (its rows parts), and ``requests``: those the synthetic store answered
(``list`` pages of 1000 keys, ``head``) and the output's storage calls by kind.

    python benchmarks/scale.py --inputs 10000 --json out/scale.json
    python benchmarks/scale.py --inputs 10000,100000,1000000 --json out/scale.json
    python benchmarks/scale.py --quick                      # 10^4 inputs: what CI runs
    python benchmarks/scale.py --s3 --json out/s3.json      # storage requests against moto's S3 server

``--s3`` counts storage requests against moto's S3 server (``tests/emulators.py``, requests
logged by a middleware in front of it): the example corpus copied ``--s3-copies`` times into a
bucket and tokenized into the bucket (real decoding: reading the inputs), and the simulation
with ``--s3-inputs`` synthetic inputs written into the bucket (the bookkeeping's writes and
reads), each through the three scenarios.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the repo's packages importable
    sys.path.insert(0, str(ROOT))

from fsspec.spec import AbstractFileSystem  # noqa: E402

FILES_PER_FOLDER = 1000
LIST_PAGE = 1000  # keys per listing request, as S3 and GCS answer
CHANGED_EVERY = 100  # the "changed" scenario rewrites every 100th input
SCENARIOS = ("first", "noop", "changed")
STUB_FRAMES, STUB_MELS = 10, 8
# List prices of S3 Standard requests (us-east-1, USD per 1000 requests, as published by AWS
# at the time of writing): PUT/COPY/POST/LIST, and GET/HEAD; DELETE is free. GCS Standard's
# class A and class B operations cost the same.
PRICE_PER_1000 = {"write": 0.005, "list": 0.005, "copy": 0.005, "read": 0.0004, "head": 0.0004, "delete": 0.0}


# ---------------------------------------------------------------------------- the synthetic store


class SynthFileSystem(AbstractFileSystem):
    """``synth://n<N>/dFFFFF/fIIIIIIII.flac``: N files, 1000 per folder, sizes and generations
    made up from the index ``I``; in revision 1 every :data:`CHANGED_EVERY`-th file is rewritten.

    ``calls`` counts what a store would be asked: listing pages (``ls`` and ``find`` answer
    :data:`LIST_PAGE` keys per request) and ``head`` (``info``).
    """

    protocol = "synth"
    root_marker = ""
    revision = 0
    calls: collections.Counter = collections.Counter()

    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        return path.split("://", 1)[-1].rstrip("/")

    @staticmethod
    def _n(path: str) -> int:
        return int(path.split("/", 1)[0][1:])

    def _file(self, i: int, n: int) -> dict:
        changed = self.revision and i % CHANGED_EVERY == CHANGED_EVERY - 1
        return {"name": f"n{n}/d{i // FILES_PER_FOLDER:05d}/f{i:08d}.flac", "type": "file",
                "size": 100_000 + (i * 7919) % 900_000 + (1 if changed else 0), "generation": str(1 + int(changed))}

    def _folder_files(self, n: int, folder: int) -> list[dict]:
        return [self._file(i, n) for i in range(folder * FILES_PER_FOLDER, min(n, (folder + 1) * FILES_PER_FOLDER))]

    def _count_list(self, entries: int) -> None:
        self.calls["list"] += max(1, math.ceil(entries / LIST_PAGE))

    def ls(self, path, detail=True, **kwargs):
        path = self._strip_protocol(path)
        parts = path.split("/")
        n = self._n(path)
        if len(parts) == 1:
            out = [{"name": f"{path}/d{f:05d}", "type": "directory", "size": 0}
                   for f in range(math.ceil(n / FILES_PER_FOLDER))]
        elif len(parts) == 2:
            out = self._folder_files(n, int(parts[1][1:]))
        else:
            out = [self.info(path)]
        self._count_list(len(out))
        return out if detail else [o["name"] for o in out]

    def find(self, path, maxdepth=None, withdirs=False, detail=False, **kwargs):
        path = self._strip_protocol(path)
        parts = path.split("/")
        n = self._n(path)
        if len(parts) == 1:
            files = [self._file(i, n) for i in range(n)]
        elif len(parts) == 2:
            files = self._folder_files(n, int(parts[1][1:]))
        else:
            files = [self.info(path)]
        self._count_list(len(files))
        out = {f["name"]: f for f in files}
        return out if detail else sorted(out)

    def info(self, path, **kwargs):
        path = self._strip_protocol(path)
        self.calls["head"] += 1
        parts = path.split("/")
        n = self._n(path)
        if len(parts) < 3:
            return {"name": path, "type": "directory", "size": 0}
        i = int(parts[2][1:9])
        if i >= n or parts[2] != f"f{i:08d}.flac":
            raise FileNotFoundError(path)
        return self._file(i, n)

    def isdir(self, path):
        return len(self._strip_protocol(path).split("/")) < 3


def register() -> None:
    import fsspec

    fsspec.register_implementation("synth", SynthFileSystem, clobber=True)


# ---------------------------------------------------------------------------- the stub for the audio stages


class _StubSampleFn:
    """One small sample per input, as the job would make it: 0.1 s of 8-band log-mel (the
    metadata laid out once per process by ``sample_meta``, then filled in per input)."""

    def __init__(self, descriptions):
        self._descriptions = descriptions
        self._template = None

    def __call__(self, ref):
        import copy
        import hashlib

        import numpy as np

        from audiotok.transforms.records import Sample, Segment
        from audiotok.transforms.segment import segment_key
        from audiotok.transforms.tokenize import sample_meta

        key = segment_key(ref, 0.0)
        if self._template is None:
            segment = Segment(key=key, source=ref, start_s=0.0, end_s=0.1, sample_rate=16000,
                              audio=np.zeros(1600, np.float32),
                              source_info={"sample_rate": 16000, "channels": 1, "format": "flac"})
            self._template = sample_meta(segment, {"logmel": np.zeros((STUB_FRAMES, STUB_MELS), np.float16)},
                                         self._descriptions)
        meta = copy.copy(self._template)
        meta["key"] = key.rsplit("-", 2)[0]
        meta["source"] = {**self._template["source"], "uri": ref.uri, "size_bytes": ref.size_bytes,
                          "version": ref.version}
        digest = np.frombuffer(hashlib.sha1(ref.uri.encode()).digest()[:16], np.uint8)
        mel = (np.resize(digest, STUB_FRAMES * STUB_MELS).reshape(STUB_FRAMES, STUB_MELS) / 32.0).astype(np.float16)
        return Sample(key=key, meta=meta, streams={"logmel": mel})


def stub_audio(refs, config):
    """The audio stages' stand-in: inputs -> ([samples], [failures])."""
    import apache_beam as beam

    from audiotok.transforms.tokenize import stream_descriptions

    descriptions = stream_descriptions(config.tokenize.tokenizers())
    samples = refs | "StubSamples" >> beam.Map(_StubSampleFn(descriptions))
    return [samples], []


# ---------------------------------------------------------------------------- one scenario, in its own process


class RssSampler:
    """Peak resident memory of this process per phase (sampled every 50 ms from /proc)."""

    def __init__(self) -> None:
        self.phase = "imports"
        self.peaks: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._thread.start()

    def rss_mb(self) -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page / 2**20

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.mark()

    def mark(self) -> None:
        rss = self.rss_mb()
        self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), rss)

    def enter(self, phase: str) -> None:
        self.mark()
        self.phase = phase
        self.mark()

    def stop(self) -> dict[str, float]:
        self.mark()
        self._stop.set()
        self._thread.join()
        return {k: round(v, 1) for k, v in self.peaks.items()}


class StorageCalls:
    """Counts the job's top-level calls into ``audiotok.transforms.storage`` by kind (a call
    made inside another one counts once, as the outer one)."""

    KINDS = ("write_bytes", "open_output", "read_bytes", "open_input", "read_range", "rename", "remove",
             "exists", "makedirs", "list_files")

    def __init__(self) -> None:
        from audiotok.transforms import storage

        self.counts: collections.Counter = collections.Counter()
        self._depth = threading.local()
        for kind in self.KINDS:
            setattr(storage, kind, self._wrap(kind, getattr(storage, kind)))

    def _wrap(self, kind, fn):
        def counted(*args, **kwargs):
            depth = getattr(self._depth, "n", 0)
            if depth == 0:
                self.counts[kind] += 1
            self._depth.n = depth + 1
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth.n = depth
        return counted


def step_times(result) -> dict[str, float]:
    """Seconds each bookkeeping step spent processing bundles, as the in-process runner measured them."""
    try:
        infos = result.monitoring_infos()
    except AttributeError:
        return {}
    totals: dict[str, float] = collections.defaultdict(float)
    for info in infos:
        if not info.urn.startswith("beam:metric:pardo_execution_time:") or "PTRANSFORM" not in info.labels:
            continue
        from apache_beam.metrics import monitoring_infos

        step = info.labels["PTRANSFORM"]
        top = step.split("/")[0]
        inner = step.split("/")[1] if "/" in step else ""
        name = f"{top}/{inner}" if top in ("ListInputs", "SelectInputs", "WriteDataset") and inner else top
        totals[name] += monitoring_infos.extract_counter_value(info) / 1000
    return {k: round(v, 3) for k, v in sorted(totals.items()) if v >= 0.001}


def run_scenario(args) -> dict[str, Any]:
    """One scenario of the job on the synthetic store (this process's peak memory is its own)."""
    sampler = RssSampler()
    import apache_beam as beam  # noqa: F401

    from audiotok.pipelines import tokenize as job
    from audiotok.runners import profiles
    from audiotok.transforms import dataset, storage
    from audiotok.transforms.match import MatchConfig
    from audiotok.transforms.segment import SegmentConfig
    from audiotok.transforms.shards import ShardConfig
    from audiotok.transforms.tokenize import TokenizeConfig

    register()
    SynthFileSystem.revision = 1 if args.scenario == "changed" else 0
    calls = StorageCalls()
    config = job.JobConfig(output=args.output, match=MatchConfig(patterns=(f"synth://n{args.inputs}/**",)),
                           segment=SegmentConfig(segment_s=30.0), tokenize=TokenizeConfig(specs=f"logmel[n_mels={STUB_MELS}]"),
                           shards=ShardConfig(), overwrite=args.scenario == "first",
                           incremental=args.scenario != "first")
    wall: dict[str, Any] = {}
    sampler.enter("launcher")
    t = time.perf_counter()
    plan = job.plan_run(config)
    wall["plan"] = round(time.perf_counter() - t, 3)
    sampler.enter("pipeline")
    t = time.perf_counter()
    p = beam.Pipeline(options=profiles.pipeline_options("direct", []))
    job.build(p, config, plan=plan, run_id=uuid.uuid4().hex, audio=stub_audio)
    result = p.run()
    result.wait_until_finish()
    wall["pipeline"] = round(time.perf_counter() - t, 3)
    wall["steps"] = step_times(result)
    counters = job.collect_counters(result)
    sampler.enter("launcher")
    t = time.perf_counter()
    index = dataset.read_index(args.output)
    wall["read_index"] = round(time.perf_counter() - t, 3)
    peaks = sampler.stop()
    layout = dataset.layout(index) or {}

    def size(rel):
        return storage.filesystem(storage.join(args.output, rel))[0].size(storage.join(args.output, rel)) if rel else 0

    return {
        "scenario": args.scenario, "inputs": args.inputs, "dataset_version": index["dataset_version"],
        "published": index["dataset_version"] == plan.version, "parts": layout.get("parts"),
        "wall_s": wall,
        "peak_rss_mb": {"imports": peaks.get("imports"), "launcher": peaks.get("launcher"),
                        "pipeline": peaks.get("pipeline")},
        "state_bytes": sum(size(rel) for rel in layout.get("state", [])),
        "index_bytes": size(dataset.INDEX_NAME),
        "rows_bytes": sum(size(rel) for rel in layout.get("rows", [])),
        "requests": {"input": dict(SynthFileSystem.calls), "output": dict(calls.counts)},
        "totals": {k: index["totals"][k] for k in ("inputs", "samples", "shards")},
        "counters": {k: v for k, v in counters.items() if k.startswith(("inputs_", "files_matched", "shards"))},
    }


def child(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=SCENARIOS)
    parser.add_argument("--inputs", type=int, required=True)
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    print(json.dumps(run_scenario(args)))


def run_child(*argv: str, env: dict | None = None) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", *argv], capture_output=True, text=True,
                          env={**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)})
    if proc.returncode:
        raise SystemExit(f"scenario {argv} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- the table


def simulate(sizes: list[int], workdir: Path, output: str | None = None, env: dict | None = None) -> list[dict]:
    rows = []
    for n in sizes:
        out = output or str(workdir / f"out-{n}")
        if output is None:
            shutil.rmtree(out, ignore_errors=True)
        for scenario in SCENARIOS:
            row = run_child(scenario, "--inputs", str(n), "--output", out, env=env)
            rows.append(row)
            print(format_row(row), flush=True)
        if output is None:
            shutil.rmtree(out, ignore_errors=True)
    return rows


HEADER = (f"{'inputs':>9} {'scenario':<8} {'pipeline s':>10} {'plan s':>7} {'peak MB':>8} {'launcher MB':>11} "
          f"{'parts':>5} {'state MB':>9} {'index KB':>8} {'rows KB':>8} {'list':>6} {'writes':>7} {'reads':>7}")


def format_row(row: dict) -> str:
    out = row["requests"]["output"]
    writes = out.get("write_bytes", 0) + out.get("open_output", 0) + out.get("rename", 0)
    reads = out.get("read_bytes", 0) + out.get("open_input", 0) + out.get("read_range", 0)
    return (f"{row['inputs']:>9} {row['scenario']:<8} {row['wall_s']['pipeline']:>10.1f} {row['wall_s']['plan']:>7.2f} "
            f"{row['peak_rss_mb']['pipeline']:>8.0f} {row['peak_rss_mb']['launcher']:>11.0f} {row['parts'] or 0:>5} "
            f"{row['state_bytes'] / 2**20:>9.1f} {row['index_bytes'] / 1024:>8.1f} {row['rows_bytes'] / 1024:>8.1f} "
            f"{row['requests']['input'].get('list', 0):>6} {writes:>7} {reads:>7}")


def fit_growth(rows: list[dict]) -> dict[str, Any]:
    """Least-squares exponents of pipeline time and peak memory against N, per scenario
    (1: linear; 0: flat), and the N = 10^7 figures they give when it was not run."""
    out = {}
    for scenario in SCENARIOS:
        pts = [(r["inputs"], r["wall_s"]["pipeline"], r["peak_rss_mb"]["pipeline"]) for r in rows
               if r["scenario"] == scenario]
        if len(pts) < 2:
            continue
        xs = [math.log(n) for n, _, _ in pts]

        def slope(ys):
            mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
            return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)

        t_exp = slope([math.log(t) for _, t, _ in pts])
        n_max, t_max, m_max = max(pts)
        # Memory above the floor of the smallest run: growth per input, extrapolated linearly.
        n_min, _, m_min = min(pts)
        per_input = (m_max - m_min) / (n_max - n_min) if n_max > n_min else 0.0
        out[scenario] = {"time_exponent": round(t_exp, 2),
                         "memory_mb_per_million_inputs": round(per_input * 1e6, 1),
                         "extrapolated_1e7": {"pipeline_s": round(t_max * (1e7 / n_max) ** t_exp),
                                              "peak_rss_mb": round(m_max + per_input * (1e7 - n_max))}}
    return out


# ---------------------------------------------------------------------------- storage requests against S3


def s3_requests(copies: int, inputs: int, workdir: Path) -> dict[str, Any]:
    """Requests moto's S3 server answered: a real job over the example corpus (reading and
    decoding inputs) and the simulation (bookkeeping), each through the three scenarios."""
    sys.path.insert(0, str(ROOT / "tests"))
    from emulators import CountingMotoS3, apply_env  # noqa: E402

    from benchmarks.throughput import EXAMPLE_CORPUS, build_corpus
    from audiotok.transforms import storage

    report: dict[str, Any] = {"job": [], "simulation": []}
    with CountingMotoS3() as s3:
        env = s3.env
        with apply_env(env):
            bucket = s3.make_bucket("corpus")
            local = workdir / "corpus"
            files = build_corpus(EXAMPLE_CORPUS, local, copies)
            for path in files:
                storage.write_bytes(f"{bucket}/in/{path.relative_to(local).as_posix()}", path.read_bytes())
            report["job"] = _job_scenarios(s3, bucket, files, local)
            s3.reset_requests()
            for scenario in SCENARIOS:
                row = run_child(scenario, "--inputs", str(inputs), "--output", f"{bucket}/sim", env=env)
                row["s3"] = s3.requests(reset=True)
                report["simulation"].append(row)
                print(f"simulation {scenario}: {inputs} inputs: {_per_input(row['s3'], inputs)}", flush=True)
    return report


def _job_scenarios(s3, bucket: str, files: list[Path], local: Path) -> list[dict]:
    from audiotok.pipelines import tokenize as job
    from audiotok.runners import profiles
    from audiotok.transforms import storage
    from audiotok.transforms.match import MatchConfig
    from audiotok.transforms.tokenize import TokenizeConfig

    out = []
    s3.reset_requests()
    for scenario in SCENARIOS:
        if scenario == "changed":  # one file in a hundred rewritten, at least one
            for path in files[::CHANGED_EVERY]:
                storage.write_bytes(f"{bucket}/in/{path.relative_to(local).as_posix()}", path.read_bytes() + b"\0")
            s3.requests(reset=True)  # the rewrite is not the job's
        config = job.JobConfig(output=f"{bucket}/tokens", match=MatchConfig(patterns=(f"{bucket}/in/**",)),
                               tokenize=TokenizeConfig(specs="logmel"), overwrite=scenario == "first",
                               incremental=scenario != "first")
        job.run(config, profiles.pipeline_options("direct", []))
        requests = s3.requests(reset=True)
        out.append({"scenario": scenario, "inputs": len(files), "s3": requests})
        print(f"job {scenario}: {len(files)} inputs: {_per_input(requests, len(files))}", flush=True)
    return out


def _per_input(requests: dict[str, dict[str, int]], n: int) -> str:
    return ", ".join(f"{side} " + " ".join(f"{api}={c / n:.2f}" for api, c in sorted(apis.items()))
                     for side, apis in sorted(requests.items()))


def cost_per_million(requests: dict[str, dict[str, int]], n: int) -> float:
    """USD of the requests per million inputs at :data:`PRICE_PER_1000`."""
    total = 0.0
    for apis in requests.values():
        for api, count in apis.items():
            total += count / n * 1e6 / 1000 * PRICE_PER_1000.get(api, 0.0004)
    return round(total, 2)


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", default="10000,100000,1000000", help="N, comma-separated (default 10^4,10^5,10^6)")
    parser.add_argument("--quick", action="store_true", help="10^4 inputs only (what CI runs)")
    parser.add_argument("--s3", action="store_true", help="count storage requests against moto's S3 server instead")
    parser.add_argument("--s3-copies", dest="s3_copies", type=int, default=2, help="example corpus copies for --s3")
    parser.add_argument("--s3-inputs", dest="s3_inputs", type=int, default=2000, help="synthetic inputs for --s3")
    parser.add_argument("--workdir", help="where outputs go (default: a temporary folder)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    sizes = [10_000] if args.quick else [int(float(x)) for x in args.inputs.split(",")]
    load = os.getloadavg()
    report: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_1_5_15": [round(x, 2) for x in load]},
    }
    with tempfile.TemporaryDirectory(prefix="audiotok-scale-", dir=args.workdir) as tmp:
        if args.s3:
            report["s3"] = s3_requests(args.s3_copies, args.s3_inputs, Path(tmp))
            for part in ("job", "simulation"):
                for row in report["s3"][part]:
                    row["usd_per_million_inputs"] = cost_per_million(row["s3"], row["inputs"])
        else:
            print(HEADER, flush=True)
            report["rows"] = simulate(sizes, Path(tmp))
            report["growth"] = fit_growth(report["rows"])
            for scenario, g in report["growth"].items():
                print(f"{scenario}: time ~ N^{g['time_exponent']}, peak memory +{g['memory_mb_per_million_inputs']} MB "
                      f"per million inputs; at 10^7: ~{g['extrapolated_1e7']['pipeline_s']} s, "
                      f"~{g['extrapolated_1e7']['peak_rss_mb']} MB", flush=True)
    report["machine"]["load_after"] = [round(x, 2) for x in os.getloadavg()]
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
