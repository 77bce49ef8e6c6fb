"""Pipeline efficiency of the tokenize job: how close the Beam pipeline comes to a bare loop.

For each model (EnCodec 24 kHz and HuBERT base: real architectures and sizes, random
weights, saved as local checkpoints so that the registered adapters load them), on a corpus
of WAV files at the model's rate whose durations are spread evenly over 1-30 s (seeded; one
segment per file), in one process and one after the other:

* ``bare``: the decoded segments already in memory; load the tokenizer, then encode them in
  batches planned over the whole corpus (``plan_batches``: longest first, the same seconds
  and count limits as the job) -- the best a hand-written batched loop can do.
* ``pipeline``: the tokenize job end to end (``audiotok.pipelines.tokenize.launch`` until the job
  finishes: plan the output, build the job, match -> decode in an isolated child process ->
  segment -> batch by length -> RunInference -> WebDataset shards -> published index), on
  FnApiRunner in this process (``--workers N``: N worker processes, which share the model
  through MultiProcessShared on CUDA). The dataset card and vocabulary that ``audiotok
  tokenize`` renders after the job are not part of it.
* ``naive``: file by file, batch size 1: decode a file, encode each of its segments alone.

Pipeline efficiency = tokens/s of ``pipeline`` / tokens/s of ``bare``; speed-up over the
naive way = tokens/s of ``pipeline`` / tokens/s of ``naive``. Every pass loads its model
(the pipeline's per-process cache is emptied first) and must count the same tokens. Untimed
warm-up passes run first; then the job's fixed cost is timed on two 1 s files (planning the
output, building the job, starting the runner, loading the model, publishing the index).
``--repeats R`` interleaves R rounds of the three passes and keeps each one's fastest: other
tenants of a shared machine move single timings by 20% or more. The ratio is also given in
this process's CPU seconds.

Padding: the job's own counters (``padding_samples / batched_samples``; on a corpus of a few
dozen files this is the padding of sorting them all), and a simulation of the job's default
batches (240 s, 64 segments, 12 x 240 s buffer) on 10,000 segment lengths spread over
1-30 s: arrival order (what BatchElements does), ``LengthBatcher``, and all sorted in memory.

On CUDA (``--device cuda``) the script prints the GPU it ran on and samples its utilisation
every 50 ms during each pass (pynvml, or ``torch.cuda.utilization``; reported as n/a when
neither is available).

    python benchmarks/pipeline_efficiency.py                  # ~5 min of audio per model, CPU
    python benchmarks/pipeline_efficiency.py --quick          # ~1 min per model
    python benchmarks/pipeline_efficiency.py --device cuda --audio-s 3600 --batch-max-s 240
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the repo's packages importable
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

logger = logging.getLogger("audiotok.benchmarks.pipeline_efficiency")

SEGMENT_S = 30.0
MIN_SEGMENT_S = 1.0
MODELS = ("encodec-24k", "hubert-base")


@dataclasses.dataclass(frozen=True)
class Model:
    """A benchmark model: how to build its checkpoint and the spec that loads it."""

    name: str
    sample_rate: int
    build: Callable[[Path], None]
    spec: Callable[[Path], str]


def _build_encodec(folder: Path) -> None:
    import torch
    from transformers import EncodecConfig, EncodecModel

    torch.manual_seed(0)
    EncodecModel(EncodecConfig()).eval().save_pretrained(str(folder))  # the 24 kHz model's architecture


def _build_hubert(folder: Path) -> None:
    import torch
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(0)
    HubertModel(HubertConfig()).eval().save_pretrained(str(folder))  # HuBERT base: 12 layers, 768 dims


MODEL_BUILDERS = {
    "encodec-24k": Model("encodec-24k", 24000, _build_encodec, lambda d: f"encodec-24k[model={d}]"),
    "hubert-base": Model("hubert-base", 16000, _build_hubert, lambda d: f"hubert-emb[model={d}]"),
}


# ---------------------------------------------------------------------------- corpus


def durations_s(total_s: float, seed: int) -> list[float]:
    """File durations spread evenly over [1, 30) s, summing to about ``total_s``."""
    rng = np.random.default_rng(seed)
    out: list[float] = []
    while sum(out) < total_s:
        out.append(round(float(rng.uniform(MIN_SEGMENT_S, SEGMENT_S - 0.01)), 3))
    return out


def speechlike(duration_s: float, rate: int, seed: int) -> np.ndarray:
    """float32 [samples]: a few harmonics with a wandering pitch and syllable-rate envelope, plus noise."""
    rng = np.random.default_rng(seed)
    n = int(round(duration_s * rate))
    t = np.arange(n) / rate
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6))
    return (0.1 * envelope * voiced + 0.01 * rng.standard_normal(n)).astype(np.float32)


def write_corpus(folder: Path, durations: Sequence[float], rate: int) -> list[Path]:
    import soundfile

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, d in enumerate(durations):
        path = folder / f"utt{i:05d}.wav"
        soundfile.write(path, speechlike(d, rate, seed=i), rate, subtype="PCM_16")
        paths.append(path)
    return paths


def decode_segments(paths: Sequence[Path]) -> list[np.ndarray]:
    """The job's segments of each file (the job's own decoder and windows), in order."""
    from audiotok.transforms.decode import DecodeConfig, decode_checked
    from audiotok.transforms.records import AudioRef
    from audiotok.transforms.segment import SegmentConfig, fixed_windows

    config = SegmentConfig(SEGMENT_S, MIN_SEGMENT_S)
    out = []
    for path in paths:
        decoded, _ = decode_checked(AudioRef(str(path)), DecodeConfig())
        out += [decoded.audio[a:b] for a, b in fixed_windows(decoded.audio.shape[-1], decoded.sample_rate, config)]
    return out


# ---------------------------------------------------------------------------- GPU utilisation


class GpuSampler:
    """Samples a GPU's utilisation (percent of time a kernel ran) every ``every_s`` seconds."""

    def __init__(self, device: str, every_s: float = 0.05):
        self._read = self._reader(device)
        self._every = every_s
        self._samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _reader(device: str) -> Callable[[], float] | None:
        if not device.startswith("cuda"):
            return None
        import torch

        index = torch.device(device).index or 0
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            return lambda: float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        except Exception:  # pynvml missing or no NVML: torch's own reader, when it works
            try:
                torch.cuda.utilization(index)
                return lambda: float(torch.cuda.utilization(index))
            except Exception:
                return None

    def __enter__(self) -> "GpuSampler":
        if self._read is not None:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self._every):
            self._samples.append(self._read())

    def __exit__(self, *_) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def busy_percent(self) -> float | None:
        return statistics.fmean(self._samples) if self._samples else None


# ---------------------------------------------------------------------------- the three passes


@dataclasses.dataclass
class Pass:
    """One timed pass: tokens produced, wall and CPU seconds of this process (model load
    included), GPU busy %."""

    name: str
    tokens: int
    wall_s: float
    cpu_s: float
    gpu_busy: float | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s


def _token_count(tok, streams: dict[str, np.ndarray]) -> int:
    from audiotok.transforms.dataset import count_tokens
    from audiotok.transforms.tokenize import stream_descriptions

    return sum(count_tokens(streams, stream_descriptions([tok])).values())


def run_bare(spec: str, segments: Sequence[np.ndarray], device: str, batch_max_s: float,
             batch_max_items: int) -> Pass:
    """Load, then encode batches planned over every segment at once."""
    import torch

    from audiotok.transforms.tokenize import plan_batches
    from audiotok.transforms.tokenizers import registry

    with GpuSampler(device) as gpu:
        start, cpu = time.perf_counter(), time.process_time()
        tok = registry.create(spec).load(device)
        plan = plan_batches([len(s) for s in segments], tok.sample_rate, batch_max_s, batch_max_items,
                            same_length_only=not tok.padding_invariant)
        tokens = 0
        with torch.inference_mode():
            for batch in plan:
                for streams in tok.encode_batch([segments[i] for i in batch]):
                    tokens += _token_count(tok, streams)
        _synchronize(device)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return Pass("bare", tokens, wall, cpu, gpu.busy_percent(), {"batches": len(plan)})


def run_naive(spec: str, paths: Sequence[Path], device: str) -> Pass:
    """File by file: decode, then encode each segment alone."""
    import torch

    from audiotok.transforms.tokenizers import registry

    with GpuSampler(device) as gpu:
        start, cpu = time.perf_counter(), time.process_time()
        tok = registry.create(spec).load(device)
        tokens = 0
        with torch.inference_mode():
            for path in paths:
                for segment in decode_segments([path]):
                    tokens += _token_count(tok, tok.encode(segment))
        _synchronize(device)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return Pass("naive", tokens, wall, cpu, gpu.busy_percent())


def run_pipeline(spec: str, corpus: Path, output: Path, device: str, batch_max_s: float, batch_max_items: int,
                 workers: int) -> Pass:
    """The tokenize job end to end; tokens from the index it publishes."""
    from apache_beam.options.pipeline_options import PipelineOptions

    import torch

    from audiotok.pipelines import tokenize as job
    from audiotok.transforms import dataset, inference
    from audiotok.transforms.match import MatchConfig
    from audiotok.transforms.segment import SegmentConfig
    from audiotok.transforms.tokenize import TokenizeConfig

    config = job.JobConfig(
        output=str(output), match=MatchConfig(patterns=(f"{corpus}/*.wav",)),
        segment=SegmentConfig(segment_s=SEGMENT_S, min_segment_s=MIN_SEGMENT_S),
        # The bare loop's thread count: the job would otherwise set CPU inference to one thread,
        # for this whole process (torch's setting is global), mid-benchmark.
        tokenize=TokenizeConfig(specs=spec, batch_max_s=batch_max_s, batch_max_items=batch_max_items, device=device,
                                torch_threads=torch.get_num_threads()),
        overwrite=True)
    flags = ["--runner=FnApiRunner"]
    if workers > 1:
        flags += ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]
    inference._LOADED.clear()  # a fresh worker: this pass loads its model too
    with GpuSampler(device) as gpu:
        start, cpu = time.perf_counter(), time.process_time()
        result = job.launch(config, PipelineOptions(flags))  # plans the output, builds and starts the job
        result.wait_until_finish()
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    counters = job.collect_counters(result)
    index = dataset.read_index(str(output))
    tokens = sum(index["totals"]["tokens"].values())
    padding, batched = counters.get("padding_samples", 0), counters.get("batched_samples", 0)
    return Pass("pipeline", tokens, wall, cpu, gpu.busy_percent(), {
        "samples": index["totals"]["samples"], "failures": index["totals"]["failures"],
        "padding_fraction": padding / batched if batched else None, "model_loads": counters.get("model_loads")})


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


# ---------------------------------------------------------------------------- padding simulation


def simulate_padding(batch_max_s: float, batch_max_items: int, buffer_s: float, n: int = 10_000,
                     rate: int = 100) -> dict[str, float]:
    """Padding fraction of three ways to batch ``n`` lengths spread evenly over 1-30 s."""
    from audiotok.transforms.tokenize import LengthBatcher, padding_of, plan_batches

    lengths = [int(d * rate) for d in np.random.default_rng(1).uniform(1, 30, n)]
    max_samples = int(batch_max_s * rate)

    def fraction(batches: list[list[int]]) -> float:
        padding, padded = map(sum, zip(*(padding_of(b) for b in batches)))
        return padding / padded

    arrival, current = [], []
    for length in lengths:
        if current and (len(current) >= batch_max_items or max(*current, length) * (len(current) + 1) > max_samples):
            arrival.append(current)
            current = []
        current.append(length)
    arrival.append(current)
    batcher = LengthBatcher(max_samples, batch_max_items, int(buffer_s * rate))
    bucketed = [b for length in lengths for b in batcher.add(length, length)] + batcher.flush()
    everything = [[lengths[i] for i in b] for b in plan_batches(lengths, rate, batch_max_s, batch_max_items)]
    return {"arrival_order": fraction(arrival), "length_batcher": fraction(bucketed),
            "all_in_memory": fraction(everything), "batch_max_s": batch_max_s, "batch_max_items": batch_max_items,
            "buffer_s": buffer_s}


# ---------------------------------------------------------------------------- driver


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{device}: {torch.cuda.get_device_name(torch.device(device))}"
    return f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def benchmark_model(model: Model, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    folder = workdir / model.name
    checkpoint = folder / "checkpoint"
    logger.info("%s: building the checkpoint (random weights)", model.name)
    model.build(checkpoint)
    spec = model.spec(checkpoint)
    durations = durations_s(args.audio_s, seed=args.seed)
    paths = write_corpus(folder / "corpus", durations, model.sample_rate)
    segments = decode_segments(paths)
    logger.info("%s: %d files, %.0f s of audio", model.name, len(paths), sum(durations))

    # Untimed warm-up: imports, the decoder's forkserver, first-call set-up in torch and Beam.
    # Then the job's fixed cost: the same job on two 1 s files (model load included).
    tiny = folder / "tiny"
    write_corpus(tiny, [1.0, 1.0], model.sample_rate)
    run_pipeline(spec, tiny, folder / "tiny-out", args.device, args.batch_max_s, args.batch_max_items, args.workers)
    run_bare(spec, segments[:2], args.device, args.batch_max_s, args.batch_max_items)
    fixed = run_pipeline(spec, tiny, folder / "tiny-out", args.device, args.batch_max_s, args.batch_max_items,
                         args.workers)

    passes: dict[str, list[Pass]] = {"bare": [], "pipeline": [], "naive": []}
    for round_ in range(args.repeats):
        for name in passes:
            logger.info("%s: round %d, %s", model.name, round_ + 1, name)
            if name == "bare":
                result = run_bare(spec, segments, args.device, args.batch_max_s, args.batch_max_items)
            elif name == "pipeline":
                result = run_pipeline(spec, folder / "corpus", folder / "out", args.device, args.batch_max_s,
                                      args.batch_max_items, args.workers)
            else:
                result = run_naive(spec, paths, args.device)
            logger.info("%s: %s %.1f s, %.0f tokens/s", model.name, name, result.wall_s, result.tokens_per_s)
            passes[name].append(result)
    best = {name: min(runs, key=lambda r: r.wall_s) for name, runs in passes.items()}
    tokens = {name: p.tokens for name, p in best.items()}
    if len(set(tokens.values())) != 1:
        raise RuntimeError(f"{model.name}: the passes produced different token counts: {tokens}")
    audio_s = sum(durations)
    return {
        "model": model.name, "spec": spec.split("[")[0], "files": len(paths), "audio_s": round(audio_s, 1),
        "tokens": tokens["bare"],
        "job_fixed_cost_s": round(fixed.wall_s, 2),
        "passes": {name: {"wall_s": round(p.wall_s, 2), "cpu_s": round(p.cpu_s, 2),
                          "rounds_wall_s": [round(r.wall_s, 2) for r in passes[name]],
                          "tokens_per_s": round(p.tokens_per_s, 1), "x_real_time": round(audio_s / p.wall_s, 2),
                          "gpu_busy_percent": None if p.gpu_busy is None else round(p.gpu_busy, 1), **p.extra}
                   for name, p in best.items()},
        "efficiency": round(best["pipeline"].tokens_per_s / best["bare"].tokens_per_s, 3),
        # The same ratio in this process's CPU seconds: less sensitive to other tenants of the
        # machine (the pipeline's decoder child process is not counted; WAV decoding is cheap).
        "efficiency_cpu_time": round(best["bare"].cpu_s / best["pipeline"].cpu_s, 3),
        "speedup_over_naive": round(best["pipeline"].tokens_per_s / best["naive"].tokens_per_s, 3),
    }


def print_report(report: dict[str, Any]) -> None:
    print(f"\npipeline_efficiency.py on {report['device']}  ({report['date']}, load average before/after "
          f"{report['load_before']} / {report['load_after']})")
    print(f"batches <= {report['batch_max_s']} s of audio and {report['batch_max_items']} segments; "
          f"fastest of {report['repeats']} round(s); job cost: the job on two 1 s files\n")
    header = f"{'model':<12} {'audio':>7} {'bare tok/s':>11} {'pipeline tok/s':>15} {'naive tok/s':>12} " \
             f"{'efficiency':>10} {'(CPU time)':>10} {'vs naive':>9} {'padding':>8} {'GPU busy':>9} {'job cost':>9}"
    print(header)
    for r in report["models"]:
        p = r["passes"]
        pad = p["pipeline"]["padding_fraction"]
        busy = p["pipeline"]["gpu_busy_percent"]
        print(f"{r['model']:<12} {r['audio_s']:>6.0f}s {p['bare']['tokens_per_s']:>11.0f} "
              f"{p['pipeline']['tokens_per_s']:>15.0f} {p['naive']['tokens_per_s']:>12.0f} "
              f"{r['efficiency']:>10.3f} {r['efficiency_cpu_time']:>10.3f} {r['speedup_over_naive']:>8.2f}x "
              f"{'-' if pad is None else f'{100 * pad:.1f}%':>8} {'n/a' if busy is None else f'{busy:.0f}%':>9} "
              f"{r['job_fixed_cost_s']:>8.1f}s")
    sim = report["padding_simulation"]
    print(f"\npadding of 10,000 segments spread over 1-30 s in the job's default batches ({sim['batch_max_s']:.0f} s, "
          f"{sim['batch_max_items']} segments): arrival order {100 * sim['arrival_order']:.1f}%, "
          f"LengthBatcher (buffer {sim['buffer_s']:.0f} s) {100 * sim['length_batcher']:.1f}%, "
          f"all in memory {100 * sim['all_in_memory']:.1f}%")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--audio-s", dest="audio_s", type=float, default=None,
                        help="seconds of audio per model (default 300; --quick 60)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--batch-max-s", dest="batch_max_s", type=float, default=None,
                        help="seconds per batch (default 30 on CPU, where one long segment already fills the "
                             "cores; 240 on CUDA)")
    parser.add_argument("--batch-max-items", dest="batch_max_items", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1, help="pipeline worker processes (default 1: in this one)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="timed rounds, interleaved; each pass's fastest counts (default 1)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="60 s of audio per model: a smoke run")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--workdir", help="keep checkpoints, corpora and outputs here (default: a temp dir)")
    args = parser.parse_args(argv)
    args.audio_s = args.audio_s or (60.0 if args.quick else 300.0)
    args.batch_max_s = args.batch_max_s or (240.0 if args.device.startswith("cuda") else 30.0)
    unknown = sorted(set(args.models.split(",")) - set(MODEL_BUILDERS))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(MODEL_BUILDERS)}")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    for handler in logging.getLogger().handlers:  # RunInference says this at every model load
        handler.addFilter(lambda record: "Resource module is not available" not in record.getMessage())
    warnings.filterwarnings("ignore")
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    from audiotok.transforms.tokenize import TokenizeConfig

    report: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "device": device_name(args.device),
        "python": platform.python_version(), "batch_max_s": args.batch_max_s, "batch_max_items": args.batch_max_items,
        "repeats": args.repeats, "workers": args.workers, "load_before": _load_average(), "models": []}
    with tempfile.TemporaryDirectory(prefix="audiotok-efficiency-") as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        for name in args.models.split(","):
            report["models"].append(benchmark_model(MODEL_BUILDERS[name], workdir, args))
    report["load_after"] = _load_average()
    defaults = TokenizeConfig()  # the job's defaults on a GPU worker
    max_s, buffer_s = defaults.batch_limits("cuda")
    report["padding_simulation"] = simulate_padding(max_s, defaults.batch_max_items, buffer_s)
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def _load_average() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


if __name__ == "__main__":
    sys.exit(main())
