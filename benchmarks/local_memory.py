"""Peak memory of a local run against the hours of audio it tokenizes: flat, not growing.

The example corpus (9 files, 78 s) is copied until it holds the largest ``--hours`` (default 8)
into a temporary folder; for each of ``--hours`` (default 1, 2, 4, 8) a manifest names the first
copies that make that many hours. Each row is one ``audiotok tokenize`` run
(``audiotok.pipelines.tokenize.run``: the default in-process runner, ``--tokenizer logmel``, 30 s
windows, shards, index, card) in a fresh Python process, which reports its own peak resident
memory (``VmHWM``: see ``isolation.peak_rss_mb``) and the largest of its decoder processes (the
``decoder_max_rss_mb`` distribution). A ``one file`` row gives the floor: what a run needs besides its audio.

    python benchmarks/local_memory.py                       # 1, 2, 4, 8 h
    python benchmarks/local_memory.py --hours 1,2 --json out/local_memory.json
    python benchmarks/local_memory.py --quick               # 2 and 4 minutes: a smoke run
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the repo's packages importable
    sys.path.insert(0, str(ROOT))

CORPUS_S = 78.2  # the example corpus' seconds of audio


def child(argv: list[str]) -> None:
    import apache_beam as beam

    from audiotok.pipelines import tokenize as job
    from audiotok.runners import profiles
    from audiotok.transforms import isolation, metrics
    from audiotok.transforms.match import MatchConfig
    from audiotok.transforms.tokenize import TokenizeConfig

    manifest, output = argv
    config = job.JobConfig(output=output, match=MatchConfig(manifests=(manifest,)),
                           tokenize=TokenizeConfig(specs="logmel"), overwrite=True)
    start = time.perf_counter()
    result = job.launch(config, profiles.pipeline_options("direct", []))
    result.wait_until_finish()
    counters = job.collect_counters(result)
    decoder = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(metrics.NAMESPACE)
                                     .with_name("decoder_max_rss_mb"))["distributions"]
    from audiotok.transforms import card, dataset, lm

    index = dataset.read_index(output)
    lm.write_vocab(output, index)
    card.write_card(output, index, max_shards=card.RUN_MAX_SHARDS)
    print(json.dumps({
        "files": counters.get("files_ok", 0), "audio_s": counters.get("audio_ms", 0) / 1000,
        "samples": index["totals"]["samples"], "wall_s": round(time.perf_counter() - start, 1),
        "peak_rss_mb": round(isolation.peak_rss_mb(), 1),
        "decoder_peak_rss_mb": max((d.committed.max for d in decoder if d.committed), default=None),
    }))


def run_row(manifest: Path, output: Path) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", str(manifest), str(output)], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode:
        raise SystemExit(f"run on {manifest} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", default="1,2,4,8", help="hours of audio per row, comma-separated")
    parser.add_argument("--quick", action="store_true", help="2 and 4 minutes: checks that it runs")
    parser.add_argument("--workdir", help="where the corpus and outputs go (default: a temporary folder)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    hours = [2 / 60, 4 / 60] if args.quick else [float(h) for h in args.hours.split(",")]

    from benchmarks.throughput import EXAMPLE_CORPUS, build_corpus

    report: dict = {"date": datetime.date.today().isoformat(),
                    "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                "platform": platform.platform(), "load_1_5_15": list(os.getloadavg())},
                    "rows": []}
    with tempfile.TemporaryDirectory(prefix="audiotok-memory-", dir=args.workdir) as tmp:
        tmp = Path(tmp)
        copies = math.ceil(max(hours) * 3600 / CORPUS_S)
        files = build_corpus(EXAMPLE_CORPUS, tmp / "corpus", copies)
        per_copy = len(files) // copies
        rows = [("one file", [files[0]])]
        rows += [(f"{h:g} h", files[:per_copy * math.ceil(h * 3600 / CORPUS_S)]) for h in hours]
        print(f"{'row':<10} {'files':>6} {'audio h':>8} {'peak RSS MB':>12} {'decoder MB':>11} {'wall s':>8}", flush=True)
        for name, chosen in rows:
            manifest = tmp / f"{name.replace(' ', '-')}.jsonl"
            manifest.write_text("".join(json.dumps({"uri": str(p)}) + "\n" for p in chosen))
            out = run_row(manifest, tmp / "out")
            out["row"] = name
            report["rows"].append(out)
            print(f"{name:<10} {out['files']:>6} {out['audio_s'] / 3600:>8.2f} {out['peak_rss_mb']:>12.0f} "
                  f"{out['decoder_peak_rss_mb'] or 0:>11} {out['wall_s']:>8.1f}", flush=True)
    timed = [r for r in report["rows"] if r["row"] != "one file"]
    if len(timed) >= 2:
        first, last = timed[0], timed[-1]
        per_hour = (last["peak_rss_mb"] - first["peak_rss_mb"]) / ((last["audio_s"] - first["audio_s"]) / 3600)
        report["mb_per_hour"] = round(per_hour, 1)
        print(f"peak memory grows {per_hour:.0f} MB per hour of audio ({first['row']} -> {last['row']}); "
              f"the floor (one file) is {report['rows'][0]['peak_rss_mb']:.0f} MB", flush=True)
    report["machine"]["load_after"] = list(os.getloadavg())
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
