"""The main job: audio files in, WebDataset token shards out.

list (fanned out) -> join with the previous state -> decode -> resample -> segment ->
tokenize -> write shards, state and rows parts -> index. ``python -m audiotok.pipelines.tokenize --input 'DIR/**/*' --output OUT`` or
``audiotok tokenize ...``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
import uuid
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from audiotok.pipelines import fit_kmeans
from audiotok.pipelines import options as opts
from audiotok.runners import profiles
from audiotok.transforms import card, dataset, failures, incremental, lm, metrics, shards, storage
from audiotok.transforms.decode import DecodeConfig
from audiotok.transforms.match import ListInputs, MatchConfig
from audiotok.transforms.read import ReadSegments
from audiotok.transforms.segment import SegmentConfig
from audiotok.transforms.shards import ShardConfig, WriteDataset
from audiotok.transforms.tokenize import TokenizeConfig, TokenizeSegments, stream_descriptions
from audiotok.transforms.tokenizers import registry
from audiotok.transforms.tokenizers.spectral import KMeansTokenizer

logger = logging.getLogger(__name__)

CODEBOOKS_DIR = "codebooks"


@dataclasses.dataclass(frozen=True)
class JobConfig:
    """Everything one tokenize run needs (built from flags by the CLI, or directly in code)."""

    output: str
    match: MatchConfig
    decode: DecodeConfig = DecodeConfig()
    segment: SegmentConfig = SegmentConfig()
    tokenize: TokenizeConfig = TokenizeConfig()
    shards: ShardConfig = ShardConfig()
    overwrite: bool = False
    incremental: bool = False
    kmeans_max_frames: int = 200_000
    max_failure_fraction: float = 0.5

    def __post_init__(self) -> None:
        storage.check_url(self.output)
        if not 0 <= self.max_failure_fraction <= 1:
            raise ValueError(f"max_failure_fraction must be in [0, 1]. Found: {self.max_failure_fraction}")


class TooManyFailures(RuntimeError):
    """The run finished and published its dataset and failures, but more of the inputs failed
    than ``max_failure_fraction`` allows: a sign of misconfiguration, not of a few bad files.

    Attributes:
        index, counters, wall_s: what :func:`run` would have returned.
    """

    def __init__(self, message: str, index: dict, counters: dict[str, int], wall_s: float):
        super().__init__(message)
        self.index, self.counters, self.wall_s = index, counters, wall_s


def run_info(config: JobConfig) -> dict[str, Any]:
    """What the index records about the run (no wall-clock values: reruns stay identical)."""
    tokenizers = config.tokenize.tokenizers()
    return {
        "tokenizers": [t.describe() for t in tokenizers],
        "streams": stream_descriptions(tokenizers),
        "settings": {
            "decode": dataclasses.asdict(config.decode),
            "segment": dataclasses.asdict(config.segment),
            "sample_rate": config.tokenize.sample_rate(),
            "shards": dataclasses.asdict(config.shards),
        },
    }


def settings(config: JobConfig) -> dict[str, Any]:
    """What the tokens of an input depend on; its fingerprint decides what a refresh redoes."""
    return {
        "decode": config.decode.content_settings(),
        "segment": dataclasses.asdict(config.segment),
        "sample_rate": config.tokenize.sample_rate(),
        "tokenizers": [t.fingerprint() for t in config.tokenize.tokenizers()],
    }


def tokenize_audio(refs, config: JobConfig) -> tuple[list, list]:
    """The audio stages: inputs -> ([PCollection[Sample], ...], [PCollection[Failure], ...]).

    Segments made from whole files and from long files in stretches are tokenized apart (one
    model per process all the same): a Flatten of segments would make the in-process runner hold
    every segment's audio in memory.
    """
    read = refs | "ReadSegments" >> ReadSegments(
        config.match, config.decode, config.tokenize.sample_rate(), config.segment, per_path=True)
    tokenize = TokenizeSegments(config.tokenize)
    samples, fails = [], [read["failures"]]
    for i, segments in enumerate(read["segments"]):
        tokenized = segments | ("Tokenize" if i == 0 else f"Tokenize{i}") >> tokenize
        samples.append(tokenized.samples)
        fails.append(tokenized.failures)
    return samples, fails


def build(p: beam.Pipeline, config: JobConfig, plan: shards.RunPlan | None = None, run_id: str | None = None,
          audio=tokenize_audio):
    """Adds the whole job to ``p``; returns the PCollection holding the published index.

    ``audio`` makes the samples from the selected inputs (:func:`tokenize_audio`; the scale
    benchmark puts a stub there).
    """
    plan = plan or shards.RunPlan(fingerprint=incremental.settings_fingerprint(settings(config)))
    temp_dir = storage.join(config.output, dataset.TMP_DIR, run_id or uuid.uuid4().hex)
    listed = p | "ListInputs" >> ListInputs(config.match)
    runs = listed["batches"] | "WriteRuns" >> incremental.WriteRuns(temp_dir)
    selection = runs | "SelectInputs" >> incremental.SelectInputs(
        config.output, temp_dir, plan.version, plan.fingerprint, plan.previous)
    samples, fails = audio(selection["refs"], config)
    all_failures = (listed["failures"], *fails) | "AllFailures" >> beam.Flatten()
    info = run_info(config)
    return ({**selection, "samples": tuple(samples), "failures": all_failures}
            | "WriteDataset" >> WriteDataset(config.output, config.shards, info["streams"], info, plan=plan,
                                             temp_dir=temp_dir))


def plan_run(config: JobConfig) -> shards.RunPlan:
    """Decides this run's dataset version from what ``config.output`` already holds.

    A fresh output starts at version 1. An existing dataset is continued with
    ``incremental``, replaced with ``overwrite``, and otherwise refused. Anything a crashed
    run left unpublished (shards, failures, state of versions the index does not name, temp
    files) is removed first.
    """
    fingerprint = incremental.settings_fingerprint(settings(config))
    index_url = dataset.join_index(config.output)
    if storage.exists(index_url) and not config.overwrite:
        if not config.incremental:
            raise SystemExit(f"{config.output} already holds a dataset ({dataset.INDEX_NAME}); pass --incremental "
                             "to refresh it or --overwrite to replace it")
        index = dataset.read_index(config.output)
        if index.get("version", 1) not in dataset.READABLE_INDEX_VERSIONS:
            raise SystemExit(f"{config.output}: index version {index.get('version')!r}; this audiotok reads "
                             f"{', '.join(map(str, dataset.READABLE_INDEX_VERSIONS))}")
        version = int(index.get("dataset_version", 0)) + 1
        previous = incremental.Previous.of_index(index)
    else:
        prepare_output(config.output, config.overwrite)
        version, previous = 1, None
    clean_unpublished(config.output, version)
    return shards.RunPlan(version=version, fingerprint=fingerprint, previous=previous)


def clean_unpublished(output: str, version: int) -> None:
    """Removes what runs of ``version`` or later left behind without publishing it."""
    storage.remove(storage.join(output, dataset.TMP_DIR))
    for folder in (dataset.SHARDS_DIR, dataset.FAILURES_DIR, dataset.STATE_DIR, dataset.ROWS_DIR):
        fs, path = storage.filesystem(storage.join(output, folder))
        if not fs.exists(path):
            continue
        for entry in fs.ls(path, detail=False):
            name = entry.rstrip("/").rsplit("/", 1)[-1]
            digits = "".join(c for c in name.split(".")[0] if c.isdigit())
            if digits and int(digits) >= version:
                fs.rm(entry, recursive=True)


def prepare_output(output: str, overwrite: bool) -> None:
    """Refuses to mix with an existing dataset unless ``overwrite``; then clears the old one."""
    index = storage.join(output, dataset.INDEX_NAME)
    if not storage.exists(index):
        return
    if not overwrite:
        raise SystemExit(f"{output} already holds a dataset ({dataset.INDEX_NAME}); pass --overwrite to replace it")
    for name in (dataset.INDEX_NAME, dataset.SHARDS_DIR, dataset.FAILURES_DIR, dataset.TMP_DIR, dataset.STATE_DIR,
                 dataset.ROWS_DIR):
        storage.remove(storage.join(output, name))


def with_fitted_codebooks(config: JobConfig, beam_options: PipelineOptions) -> JobConfig:
    """Fits (into OUTPUT/codebooks/) a codebook for each k-means tokenizer given none, and
    returns the config with the codebooks filled in."""
    specs = []
    changed = False
    for spec in registry.split_specs(config.tokenize.specs):
        tok = registry.create(spec)
        if isinstance(tok, KMeansTokenizer) and not tok.config.codebook:
            url = storage.join(config.output, CODEBOOKS_DIR, f"{tok.name}-k{tok.config.k}.safetensors")
            if config.incremental and storage.exists(url):
                # A refresh keeps the dataset's codebook: refitting would change every unit.
                spec = _with_option(spec, "codebook", url)
                changed = True
                specs.append(spec)
                continue
            logger.info("no codebook given for %s: fitting one on a sample of the input into %s", tok.name, url)
            fit = fit_kmeans.FitConfig(spec=spec, output=url, max_frames=config.kmeans_max_frames,
                                       seed=tok.config.seed, device=config.tokenize.device)
            fit_kmeans.run(config.match, config.decode, config.segment, fit, beam_options)
            spec = _with_option(spec, "codebook", url)
            changed = True
        specs.append(spec)
    if not changed:
        return config
    return dataclasses.replace(config, tokenize=dataclasses.replace(config.tokenize, specs=",".join(specs)))


def _with_option(spec: str, key: str, value: str) -> str:
    name, options = registry.parse_spec(spec)
    options[key] = value
    return name + "[" + ",".join(f"{k}={v}" for k, v in options.items()) + "]"


def launch(config: JobConfig, beam_options: PipelineOptions) -> beam.runners.runner.PipelineResult:
    """Checks the output, fits missing codebooks and starts the job, without waiting for it
    (a Dataflow Flex Template launcher must exit once the job is submitted)."""
    if storage.exists(dataset.join_index(config.output)) and not (config.incremental or config.overwrite):
        raise SystemExit(f"{config.output} already holds a dataset ({dataset.INDEX_NAME}); pass --incremental "
                         "to refresh it or --overwrite to replace it")
    check_local_device(config.tokenize.device, beam_options)
    config = with_fitted_codebooks(config, beam_options)
    plan = plan_run(config)
    p = beam.Pipeline(options=beam_options)
    build(p, config, plan=plan, run_id=uuid.uuid4().hex)
    return p.run()


def check_local_device(device: str, beam_options: PipelineOptions) -> None:
    """Refuses ``--device cuda`` up front when the workers run here and torch sees no GPU
    (otherwise the job starts, decodes, and fails at the first batch)."""
    if not device.startswith("cuda") or not profiles.workers_are_local(beam_options):
        return
    import torch

    if not torch.cuda.is_available():
        raise SystemExit(f"--device {device}: this runner's workers run on this machine, and torch sees no CUDA "
                         f"device here (torch {torch.__version__}); use --device auto or cpu")


def run(config: JobConfig, beam_options: PipelineOptions) -> tuple[dict, dict[str, int], float]:
    """Runs the job to completion.

    Returns:
        (the written index, the Beam counters of the run, wall seconds).

    Raises:
        TooManyFailures: after everything is written, when the failed fraction of the inputs
            is over ``config.max_failure_fraction``.
    """
    start = time.monotonic()
    result = launch(config, beam_options)
    result.wait_until_finish()
    counters = collect_counters(result)
    index = dataset.read_index(config.output)
    lm.write_vocab(config.output, index)
    card.write_card(config.output, index, max_shards=card.RUN_MAX_SHARDS)
    wall_s = time.monotonic() - start
    problem = check_failure_fraction(config, index, counters)
    if problem:
        raise TooManyFailures(problem, index, counters, wall_s)
    return index, counters, wall_s


def failed_inputs(output: str, index: dict) -> set[str]:
    """The inputs (URIs, manifest lines, patterns) named by this run's dead-letter records."""
    failed = set()
    for row in dataset.failure_rows(output, index):
        parts = row["url"].split("/")
        if len(parts) > 2 and parts[1].lstrip("v").isdigit() and int(parts[1].lstrip("v")) != index.get(
                "dataset_version", int(parts[1].lstrip("v"))):
            continue  # an earlier version's records: not this run's inputs
        for line in dataset.read_jsonl(output, row["url"]):
            failed.add(json.loads(line)["uri"])
    return failed


def check_failure_fraction(config: JobConfig, index: dict, counters: dict[str, int]) -> str | None:
    """A message when more than ``config.max_failure_fraction`` of the inputs failed, else None.

    An input counts as failed when any dead-letter record names it; the inputs are the files
    matched plus the manifest lines and patterns that yielded none.
    """
    if config.max_failure_fraction >= 1 or not index["totals"].get("failures"):
        return None
    if "files_matched" not in counters:
        logger.warning("the runner reports no metrics: --max-failure-fraction is not checked")
        return None
    failed = len(failed_inputs(config.output, index))
    unmatched = sum(n for name, n in counters.items()
                    if name.startswith("failures_match_") and not name.endswith("_" + failures.BAD_NAME))
    total = counters["files_matched"] + unmatched
    if not total or failed / total <= config.max_failure_fraction:
        return None
    return (f"{failed} of {total} inputs ({failed / total:.0%}) failed, more than --max-failure-fraction "
            f"{config.max_failure_fraction:g}: check the input pattern and the decode settings (dataset and "
            f"dead letters written under {storage.join(config.output, dataset.FAILURES_DIR)}/)")


def collect_counters(result) -> dict[str, int]:
    try:
        queried = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(metrics.NAMESPACE))
    except (NotImplementedError, AttributeError):  # runners that do not report metrics
        return {}
    totals: dict[str, int] = {}
    for c in queried["counters"]:
        value = c.committed if c.committed is not None else c.attempted
        totals[c.key.metric.name] = totals.get(c.key.metric.name, 0) + int(value or 0)
    return totals


def summary(index: dict, counters: dict[str, int], wall_s: float, output: str) -> str:
    """The few lines a local run ends with."""
    t = index["totals"]
    audio_h = t["audio_s"] / 3600
    lines = [
        f"audiotok: {t['samples']} samples, {t['audio_s'] / 60:.1f} min of audio in {t['shards']} shard(s) "
        f"under {output} ({wall_s:.1f} s, {t['audio_s'] / max(wall_s, 1e-9):.0f}x real time)",
        f"  files: {counters.get('files_ok', 0)} decoded, {t['failures']} failed"
        + (" (" + ", ".join(f"{r}: {n}" for r, n in t["failures_by_reason"].items()) + ")" if t["failures"] else ""),
    ]
    nonspeech_s, dropped_s = counters.get("nonspeech_ms", 0) / 1000, counters.get("dropped_speech_ms", 0) / 1000
    if nonspeech_s or dropped_s:
        decoded_s = counters.get("audio_ms", 0) / 1000
        share = f" ({nonspeech_s / decoded_s:.0%} of the {decoded_s / 60:.1f} min decoded)" if decoded_s else ""
        lines.append(f"  left out: {nonspeech_s / 60:.1f} min of non-speech{share}, {dropped_s:.1f} s of speech in "
                     "stretches shorter than --min-segment-s")
    for name, n in t["tokens"].items():
        per_h = n / audio_h if audio_h else 0
        lines.append(f"  {name}: {n} tokens ({per_h:,.0f} per hour of audio)")
    if t["failures"]:
        lines.append(f"  dead letters: {storage.join(output, dataset.FAILURES_DIR)}/")
    return "\n".join(lines)


def print_tokenizer_help(out=None) -> None:
    out = out or sys.stdout
    rows = registry.help_table()
    headers = ["tokenizer", "family", "sample_rate", "stream", "kind", "frame_rate_hz", "num_codebooks",
               "codebook_size", "dim", "weights"]
    widths = {h: max(len(h), *(len(str(r[h] if r[h] is not None else "-")) for r in rows)) for h in headers}
    print("  ".join(h.ljust(widths[h]) for h in headers), file=out)
    for r in rows:
        print("  ".join(str(r[h] if r[h] is not None else "-").ljust(widths[h]) for h in headers), file=out)
    print("\nOptions: --tokenizer 'name[key=value,...]'; several tokenizers: --tokenizer a,b", file=out)


def main(argv: list[str] | None = None, wait: bool = True) -> int:
    """``audiotok tokenize``; with ``wait=False`` it returns once the job is submitted."""
    args, beam_args = opts.parse(opts.TokenizeOptions, list(sys.argv[1:] if argv is None else argv),
                                 prog="audiotok tokenize")
    if args.tokenizer.strip() == "help":
        print_tokenizer_help()
        return 0
    if not args.input and not args.manifest:
        raise SystemExit("audiotok tokenize: give --input PATTERN or --manifest URL")
    if not args.output:
        raise SystemExit("audiotok tokenize: give --output URL")
    try:
        config = JobConfig(
            output=args.output, match=opts.match_config(args), decode=opts.decode_config(args),
            segment=opts.segment_config(args), tokenize=opts.tokenize_config(args), shards=opts.shard_config(args),
            overwrite=args.overwrite, incremental=args.incremental, kmeans_max_frames=args.kmeans_max_frames,
            max_failure_fraction=args.max_failure_fraction)
        beam_options = profiles.pipeline_options(args.profile, beam_args)
    except ValueError as e:
        raise SystemExit(f"audiotok tokenize: {e}") from None
    if not wait:
        launch(config, beam_options)
        return 0
    try:
        index, counters, wall_s = run(config, beam_options)
    except TooManyFailures as e:
        print(summary(e.index, e.counters, e.wall_s, config.output), file=sys.stderr)
        print(f"audiotok tokenize: {e}", file=sys.stderr)
        return 1
    print(summary(index, counters, wall_s, config.output), file=sys.stderr)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
