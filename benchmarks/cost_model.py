"""A cost model on paper for tokenizing a corpus on Dataflow, from figures measured here.

What it measures, in this process:

* log-mel end to end: audio hours per vCPU-hour of the default job (decode -> 16 kHz -> 30 s
  windows -> log-mel -> shards, a whole process: imports and the card included), from
  ``benchmarks/local_memory.py``'s JSON (``--local-memory``; its largest row) or, without it,
  one ``local_memory`` row of ``--hours`` (default 1) run now;
* EnCodec 24 kHz and HuBERT base (``hubert-l9-km500``) at their real size with random weights:
  x real time on one CPU thread (one 10 s segment at a time, the CPU default), and the
  floating-point operations per second of audio (``torch.utils.flop_counter``; its formulas
  cover matmuls and convolutions, not LSTMs: EnCodec's two LSTM layers are added from their
  shapes).

Shard counts follow the job's defaults (``ShardConfig``: files grouped 64 at a time, each group's
30 s samples in shards of at most 1,000 samples or 1 GiB) for files of ``--file-min`` minutes.

What it assumes (constants below; change them for your region and hardware): Dataflow batch
list prices per vCPU-hour and GB-hour, the worker machine, an NVIDIA L4's dense FP16 tensor
peak from its datasheet and the fraction of it a tokenizer reaches. GPU rows are estimates from
the arithmetic, not measurements: ``benchmarks/pipeline_efficiency.py --device cuda`` measures
them on a machine with a GPU. Storage requests per million inputs come from ``benchmarks/scale.py
--s3``'s JSON when given (``--s3``).

    python benchmarks/cost_model.py --local-memory out/local_memory.json --s3 out/s3.json
    python benchmarks/cost_model.py --hours 100000 --deadline-h 24 --json out/cost.json
    python benchmarks/cost_model.py --quick       # 4 s segments, a 4-minute local run: a smoke run
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the repo's packages importable
    sys.path.insert(0, str(ROOT))
if str(ROOT / "tests") not in sys.path:  # synthetic speech-like audio (tests/audio_fixtures.py)
    sys.path.insert(0, str(ROOT / "tests"))

from benchmarks import common  # noqa: E402

# Assumptions (USD, us-central1 list prices as published by Google at the time of writing; check
# https://cloud.google.com/dataflow/pricing before relying on them).
DATAFLOW_VCPU_HOUR = 0.056
DATAFLOW_GB_HOUR = 0.003557
WORKER = {"machine": "n1-standard-4", "vcpus": 4, "memory_gb": 15.0}
# NVIDIA L4 datasheet: 121 TFLOPS dense FP16/BF16 tensor (242 with sparsity).
L4_DENSE_FP16_FLOPS = 121e12
# The fraction of that peak a tokenizer reaches: an assumption (small-channel convolutions and
# float32 layers reach far less than large matmuls); measure it where a GPU is at hand.
GPU_UTILIZATION = 0.10

SEGMENT_S = 30.0
# Bytes per second of audio a stream stores (arrays only): log-mel 100 frames x 80 float16;
# HuBERT units 50 int16; EnCodec 24 kHz at 6 kbps, 75 frames x 8 codebooks int16.
STREAM_BYTES_PER_S = {"logmel": 100 * 80 * 2, "hubert-l9-km500": 50 * 2, "encodec-24k": 75 * 8 * 2}
MODELS = ("encodec-24k", "hubert-l9-km500")


def count_lstm_flops(module) -> list[float]:
    """Hooks every ``torch.nn.LSTM`` under ``module`` to add up its FLOPs (input and recurrent
    matmuls of the 4 gates, per step), which ``torch.utils.flop_counter`` does not count. Returns
    the one-element list the hooks add to."""
    import torch

    total = [0.0]

    def hook(m, inputs, _output):
        x = inputs[0]
        steps = x.shape[1] if m.batch_first else x.shape[0]
        batch = x.shape[0] if m.batch_first else (x.shape[1] if x.dim() == 3 else 1)
        directions = 2 if m.bidirectional else 1
        for layer in range(m.num_layers):
            n_in = m.input_size if layer == 0 else m.hidden_size * directions
            total[0] += 2 * 4 * m.hidden_size * (n_in + m.hidden_size) * directions * steps * batch

    for m in module.modules():
        if isinstance(m, torch.nn.LSTM):
            m.register_forward_hook(hook)
    return total


def measure_model(name: str, root: Path, seconds: float) -> dict[str, Any]:
    import torch
    from torch.nn.utils import parametrize
    from torch.utils.flop_counter import FlopCounterMode

    from audio_fixtures import synth_speechlike
    from benchmarks import tokenizers_cpu

    torch.set_num_threads(1)
    tok = tokenizers_cpu.build(name, root)
    audio = synth_speechlike(seconds, tok.sample_rate, seed=0)[0]
    tok.encode(audio[: tok.sample_rate])  # warm-up
    times = []
    for _ in range(2):
        t = time.perf_counter()
        tok.encode(audio)
        times.append(time.perf_counter() - t)
    # The counter cannot run weight-normed (parametrized) layers: fold them into plain weights
    # (same values, same arithmetic) once the model has been timed as the job runs it.
    module = tokenizers_cpu._module(tok)
    for m in list(module.modules()):
        if parametrize.is_parametrized(m):
            for tensor_name in list(m.parametrizations):
                parametrize.remove_parametrizations(m, tensor_name, leave_parametrized=True)
    lstm = count_lstm_flops(module)
    with FlopCounterMode(display=False) as counter:
        tok.encode(audio)
    flops_per_s = (counter.get_total_flops() + lstm[0]) / seconds
    return {"tokenizer": name, "gflop_per_audio_s": round(flops_per_s / 1e9, 2),
            "cpu_x_real_time_1_thread": round(seconds / min(times), 2)}


def logmel_rate(local_memory_json: str | None, hours: float, workdir: Path) -> dict[str, Any]:
    """Audio hours per vCPU-hour of the default log-mel job, from local_memory.py's largest row."""
    if local_memory_json is None:
        local_memory_json = str(workdir / "local_memory.json")
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "local_memory.py"), "--hours", f"{hours:g}",
                        "--workdir", str(workdir / "local"), "--json", local_memory_json], check=True)
    report = json.loads(Path(local_memory_json).read_text())
    row = max(report["rows"], key=lambda r: r["audio_s"])
    cpus = report["machine"]["cpus"]
    audio_h = row["audio_s"] / 3600
    return {"source": Path(local_memory_json).name, "row": row["row"], "audio_h": round(audio_h, 2),
            "wall_s": row["wall_s"], "cpus": cpus, "peak_rss_mb": row["peak_rss_mb"],
            "audio_h_per_vcpu_h": round(audio_h / (row["wall_s"] * cpus / 3600), 1)}


def s3_cost(s3_json: str | None) -> dict[str, float] | None:
    if s3_json is None:
        return None
    report = json.loads(Path(s3_json).read_text())["s3"]
    out = {}
    for part in ("job", "simulation"):
        for row in report.get(part, []):
            if "usd_per_million_inputs" in row:
                out[f"{part} {row['scenario']} ({row['inputs']} inputs)"] = row["usd_per_million_inputs"]
    return out


def shard_count(corpus_h: float, file_min: float, bytes_per_s: float) -> int:
    """Shards the job writes with its defaults (``ShardConfig``): files are grouped
    ``files_per_bucket`` at a time, and each group's samples fill shards of ``max_samples`` or
    ``max_bytes`` (30 s samples, every file ``file_min`` minutes long)."""
    from audiotok.transforms.shards import ShardConfig

    config = ShardConfig()
    files = math.ceil(corpus_h * 60 / file_min)
    groups = math.ceil(files / config.files_per_bucket)
    per_group_s = min(files, config.files_per_bucket) * file_min * 60
    per_group = max(math.ceil(per_group_s / SEGMENT_S / config.max_samples),
                    math.ceil(per_group_s * bytes_per_s / config.max_bytes))
    return groups * per_group


def plan(corpus_h: float, deadline_h: float, logmel: dict, models: list[dict],
         file_min: float = 10.0) -> list[dict[str, Any]]:
    """Per tokenizer: compute hours, workers for the deadline, USD, shards and bytes (files of
    ``file_min`` minutes)."""
    worker_hour_usd = WORKER["vcpus"] * DATAFLOW_VCPU_HOUR + WORKER["memory_gb"] * DATAFLOW_GB_HOUR
    rows = []

    def shards(stream: str) -> dict[str, Any]:
        data = corpus_h * 3600 * STREAM_BYTES_PER_S[stream]
        return {"stream_tb": round(data / 1e12, 3),
                "shards": shard_count(corpus_h, file_min, STREAM_BYTES_PER_S[stream])}

    def cpu_row(what: str, stream: str, audio_h_per_vcpu_h: float, basis: str) -> dict[str, Any]:
        vcpu_h = corpus_h / audio_h_per_vcpu_h
        worker_h = vcpu_h / WORKER["vcpus"]
        return {"what": what, "basis": basis, "audio_h_per_unit_h": round(audio_h_per_vcpu_h, 1), "unit": "vCPU",
                "unit_hours": round(vcpu_h), "workers_for_deadline": math.ceil(worker_h / deadline_h),
                "usd": round(worker_h * worker_hour_usd), **shards(stream)}

    rows.append(cpu_row("decode + log-mel", "logmel", logmel["audio_h_per_vcpu_h"],
                        f"measured: {logmel['row']} local run, whole process"))
    for m in models:
        rows.append(cpu_row(f"{m['tokenizer']} on CPU", m["tokenizer"], m["cpu_x_real_time_1_thread"],
                            "measured: one thread, model alone (decode not included)"))
    for m in models:
        x_real_time = L4_DENSE_FP16_FLOPS * GPU_UTILIZATION / (m["gflop_per_audio_s"] * 1e9)
        gpu_h = corpus_h / x_real_time
        rows.append({"what": f"{m['tokenizer']} on an L4", "unit": "GPU",
                     "basis": f"estimate: {m['gflop_per_audio_s']} GFLOP per audio second (counted here) at "
                              f"{GPU_UTILIZATION:.0%} of the L4's dense FP16 peak",
                     "audio_h_per_unit_h": round(x_real_time), "unit_hours": round(gpu_h, 1),
                     "workers_for_deadline": math.ceil(gpu_h / deadline_h), "usd": None, **shards(m["tokenizer"])})
    return rows


def format_table(rows: list[dict], corpus_h: float, deadline_h: float, file_min: float) -> str:
    lines = [f"{corpus_h:,.0f} hours of audio in {file_min:g}-minute files, {deadline_h:g} h deadline; workers: "
             f"{WORKER['machine']} (CPU rows) or one L4 each (GPU rows)",
             f"{'what':<30} {'audio h/unit h':>14} {'unit h':>9} {'workers':>8} {'USD':>8} {'TB':>7} {'shards':>7}  basis"]
    for r in rows:
        usd = f"{r['usd']:,}" if r["usd"] is not None else "-"
        lines.append(f"{r['what']:<30} {r['audio_h_per_unit_h']:>14,} {r['unit_hours']:>9,} "
                     f"{r['workers_for_deadline']:>8,} {usd:>8} {r['stream_tb']:>7} {r['shards']:>7,}  {r['basis']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=100_000, help="corpus hours (default 100,000)")
    parser.add_argument("--deadline-h", dest="deadline_h", type=float, default=24.0,
                        help="wall-clock hours the job may take: sets the worker count (default 24)")
    parser.add_argument("--file-min", dest="file_min", type=float, default=10.0,
                        help="minutes of audio per file: the shard count depends on it (default 10)")
    parser.add_argument("--local-memory", dest="local_memory", metavar="JSON",
                        help="benchmarks/local_memory.py's JSON (default: run a 1-hour row now)")
    parser.add_argument("--s3", metavar="JSON", help="benchmarks/scale.py --s3's JSON: request costs per million inputs")
    parser.add_argument("--quick", action="store_true", help="4 s segments and a 4-minute local run")
    parser.add_argument("--workdir", metavar="DIR", help="where models and runs go (default: a temporary folder)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="audiotok-cost-") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        logmel = logmel_rate(args.local_memory, 4 / 60 if args.quick else 1.0, work)
        models = [measure_model(name, work / "models", 4.0 if args.quick else 10.0) for name in MODELS]
    rows = plan(args.hours, args.deadline_h, logmel, models, args.file_min)
    print(format_table(rows, args.hours, args.deadline_h, args.file_min))
    requests = s3_cost(args.s3)
    if requests:
        print("storage requests, USD per million inputs (S3 list prices): "
              + "; ".join(f"{k}: {v}" for k, v in requests.items()))
    if args.json:
        report = {"date": datetime.date.today().isoformat(), "machine": common.machine_info(["torch"]), "corpus_h": args.hours,
                  "deadline_h": args.deadline_h, "file_min": args.file_min, "assumptions": {
                      "dataflow_vcpu_hour_usd": DATAFLOW_VCPU_HOUR, "dataflow_gb_hour_usd": DATAFLOW_GB_HOUR,
                      "worker": WORKER, "l4_dense_fp16_flops": L4_DENSE_FP16_FLOPS, "gpu_utilization": GPU_UTILIZATION},
                  "logmel": logmel, "models": models, "rows": rows, "storage_usd_per_million_inputs": requests}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
