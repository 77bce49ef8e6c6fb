"""The main job: audio files in, WebDataset token shards out.

list (fanned out) -> join with the previous state -> decode -> segment (at each source's rate)
-> tokenize (each tokenizer resamples to its own rate) -> write shards, state and rows parts ->
index. ``python -m audiotok.pipelines.tokenize --input 'DIR/**/*' --output OUT`` or
``audiotok tokenize ...``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import posixpath
import sys
import time
import uuid
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineState

from audiotok.pipelines import fit_kmeans
from audiotok.pipelines import gc
from audiotok.runners import profiles
from audiotok.transforms import (card, dataset, failures, incremental, interpreter, lease, lm, metrics, shards,
                                 storage)
from audiotok.transforms.decode import DecodeConfig
from audiotok.transforms.match import ListInputs, MatchConfig
from audiotok.transforms.read import ReadSegments
from audiotok.transforms.segment import SegmentConfig
from audiotok.transforms.shards import ShardConfig, WriteDataset
from audiotok.transforms.tokenize import TokenizeConfig, TokenizeSegments, stream_descriptions
from audiotok.transforms.tokenizers import registry, weights
from audiotok.transforms.tokenizers.base import Tokenizer
from audiotok.transforms.tokenizers.spectral import KMeansTokenizer

logger = logging.getLogger(__name__)

CODEBOOKS_DIR = "codebooks"
EXIT_BUSY = lease.EXIT_BUSY


@dataclasses.dataclass(frozen=True)
class JobConfig:
    """Everything one tokenize run needs (built from flags by the CLI, or directly in code).

    Attributes:
        output: the dataset folder (any fsspec URL).
        match, decode, segment, tokenize, shards: the stages' settings.
        overwrite: replace an existing dataset in ``output`` (otherwise an existing one is
            refused).
        incremental: refresh the dataset in ``output``: process only new and changed inputs (and
            all of them when the settings changed), exclude deleted ones, publish a new version.
        kmeans_max_frames: frames sampled to fit a k-means codebook on the fly, for a k-means
            tokenizer given no codebook.
        max_failure_fraction: after writing the dataset and its failures, fail the run when more
            than this fraction of the inputs has a dead-letter record (a sign of
            misconfiguration; 1: never).
        wait_for_lock_s: when another run is writing ``output``, wait up to this many seconds
            for it to finish (0: refuse at once).
        gc_grace_s: after publishing, delete the files of versions replaced more than this many
            seconds ago (readers holding an older index keep working until then; -1: never; see
            ``audiotok gc``).
    """

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
    wait_for_lock_s: float = 0.0
    gc_grace_s: float = gc.DEFAULT_GRACE_S

    def __post_init__(self) -> None:
        storage.check_url(self.output)
        if not 0 <= self.max_failure_fraction <= 1:
            raise ValueError(f"max_failure_fraction must be in [0, 1]. Found: {self.max_failure_fraction}")
        if self.wait_for_lock_s < 0:
            raise ValueError(f"wait_for_lock_s must be >= 0. Found: {self.wait_for_lock_s}")


class TooManyFailures(RuntimeError):
    """The run finished and published its dataset and failures, but more of the inputs failed
    than ``max_failure_fraction`` allows: a sign of misconfiguration, not of a few bad files.

    Attributes:
        index, counters, wall_s: what :func:`run` would have returned.
    """

    def __init__(self, message: str, index: dict, counters: dict[str, int], wall_s: float):
        super().__init__(message)
        self.index, self.counters, self.wall_s = index, counters, wall_s


def absolute_url(url: str) -> str:
    """``url`` independent of the working directory: ``file:///...`` for a local path."""
    return "file://" + storage.absolute(url) if storage.is_local(url) else url


def dataset_url(url: str, output: str) -> str:
    """How the index names a codebook the run read: relative to the dataset root when it lies
    inside it, else its :func:`absolute_url`, so the index never depends on the directory the
    job was started from."""
    local, target = storage.is_local(url), storage.absolute(url).rstrip("/")
    out_local, root = storage.is_local(output), storage.absolute(output).rstrip("/")
    if local == out_local:
        if local and os.path.commonpath([target, root]) == root and target != root:
            return os.path.relpath(target, root).replace(os.sep, "/")
        if not local and target.startswith(root + "/"):
            return target[len(root) + 1:]
    return absolute_url(target)


def describe_for_index(tok: Tokenizer, output: str) -> dict[str, Any]:
    """``tok.describe()`` with its codebook named as :func:`dataset_url` says and a checkpoint
    folder by its absolute URL (a relative one could not be told from a Hub id, which stays as
    it is)."""
    described = tok.describe()
    config = dict(described["config"])
    if config.get("codebook"):
        config["codebook"] = dataset_url(config["codebook"], output)
    model = config.get("model")
    if model and weights.location_kind(model) != "hub":
        config["model"] = absolute_url(model)
    return {**described, "config": config}


def run_info(config: JobConfig) -> dict[str, Any]:
    """What the index records about the run (no wall-clock values, nothing that depends on the
    directory the job was started from: reruns stay identical)."""
    tokenizers = config.tokenize.tokenizers()
    return {
        "tokenizers": [describe_for_index(t, config.output) for t in tokenizers],
        "streams": stream_descriptions(tokenizers),
        "settings": {
            "decode": dataclasses.asdict(config.decode),
            "segment": dataclasses.asdict(config.segment),
            "shards": dataclasses.asdict(config.shards),
        },
    }


def settings(config: JobConfig) -> dict[str, Any]:
    """What the tokens of an input depend on; its fingerprint decides what a refresh redoes."""
    return {
        "decode": config.decode.content_settings(),
        "segment": dataclasses.asdict(config.segment),
        "tokenizers": [t.fingerprint() for t in config.tokenize.tokenizers()],
    }


def tokenize_audio(refs, config: JobConfig) -> tuple[list, list]:
    """The audio stages: inputs -> ([PCollection[Sample], ...], [PCollection[Failure], ...]).

    Segments made from whole files and from long files in stretches are tokenized apart (one
    model per process all the same): a Flatten of segments would make the in-process runner hold
    every segment's audio in memory.
    """
    read = refs | "ReadSegments" >> ReadSegments(config.match, config.decode, config.segment, per_path=True)
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
    selection = {"runs": runs, "failures": listed["failures"]} | "SelectInputs" >> incremental.SelectInputs(
        config.output, temp_dir, plan.version, plan.fingerprint, plan.previous)
    samples, fails = audio(selection["refs"], config)
    all_failures = (fails or [p | "NoFailures" >> beam.Create([])]) | "AllFailures" >> beam.Flatten()
    info = run_info(config)
    return ({**selection, "samples": tuple(samples), "failures": all_failures}
            | "WriteDataset" >> WriteDataset(config.output, config.shards, info["streams"], info, plan=plan,
                                             temp_dir=temp_dir))


def plan_run(config: JobConfig, owner: str | None = None, release_lease: bool = False) -> shards.RunPlan:
    """Decides this run's dataset version from what ``config.output`` already holds.

    Called under the dataset's lease (run ``owner``). A fresh output starts at version 1. An
    existing dataset is continued with ``incremental`` and replaced with ``overwrite``: either
    way the new version is written beside the old one and published by the index write,
    conditional on the index read here (its generation is in the plan). Anything a crashed
    run left unpublished (versions the index does not reach, temp files) is removed first.
    """
    fingerprint = incremental.settings_fingerprint(settings(config))
    index_url = dataset.join_index(config.output)
    try:
        data, generation = storage.read_versioned(index_url)
    except FileNotFoundError:
        data, generation = None, None
    if data is None:
        version, previous = 1, None
    else:
        if not (config.incremental or config.overwrite):
            raise SystemExit(already_a_dataset(config.output))
        try:
            index = json.loads(data)
        except ValueError as e:
            raise SystemExit(f"{index_url} does not parse ({e}): restore it, or remove it to start over") from None
        if index.get("version", 1) not in dataset.READABLE_INDEX_VERSIONS:
            raise SystemExit(f"{config.output}: index version {index.get('version')!r}; this audiotok reads "
                             f"{', '.join(map(str, dataset.READABLE_INDEX_VERSIONS))}")
        version = int(index.get("dataset_version", 0)) + 1
        previous = incremental.Previous.of_index(index) if config.incremental and not config.overwrite else None
    gc.clean_unpublished(config.output, version)
    return shards.RunPlan(version=version, fingerprint=fingerprint, previous=previous,
                          index_generation=generation, lease_owner=owner, release_lease=release_lease)


def already_a_dataset(output: str) -> str:
    return (f"{output} already holds a dataset ({dataset.INDEX_NAME}); pass --incremental to refresh it or "
            "--overwrite to replace it")


# ------------------------------------------------------------------ the output, checked before anything runs


def input_bases(config: JobConfig) -> list[str]:
    """The folders the input patterns read from (each pattern up to its first glob character)."""
    bases = []
    for pattern in config.match.patterns:
        cut = min([i for i, c in enumerate(pattern) if c in "*?["] or [len(pattern)])
        base = pattern[:cut]
        if cut < len(pattern):
            base = base.rsplit("/", 1)[0] if "/" in base else "."
        bases.append(base)
    return bases


def _comparable(url: str) -> tuple[str, str]:
    """(protocol family, absolute path) of a URL or path, local symlinks resolved."""
    protocol = storage.protocol_of(url)
    if protocol in ("", "file", "local"):
        path = url.split("://", 1)[1] if "://" in url else url
        return "file", os.path.realpath(path).rstrip("/") or "/"
    family = "gs" if protocol in storage.GCS_PROTOCOLS else "s3" if protocol in storage.S3_PROTOCOLS else protocol
    return family, posixpath.normpath(url.split("://", 1)[1]).rstrip("/")


def _within(inner: str, outer: str) -> bool:
    (a_fs, a), (b_fs, b) = _comparable(inner), _comparable(outer)
    return a_fs == b_fs and (a == b or a.startswith(b.rstrip("/") + "/"))


def check_output(config: JobConfig) -> None:
    """Refuses, before anything is written or decoded, an output audiotok must not write into.

    Raises:
        SystemExit: (one line) the output lies inside an input folder (later runs would read
            the shards and the card as audio) or holds one; it is neither empty nor an
            audiotok dataset (whatever the flags: nothing audiotok did not write is touched);
            it holds a dataset and neither ``incremental`` nor ``overwrite`` is given.
    """
    out = config.output
    for pattern, base in zip(config.match.patterns, input_bases(config)):
        if _within(out, base) or _within(base, out):
            raise SystemExit(f"--output {out} and --input {pattern} overlap: runs would read the dataset as audio; "
                             "put the output outside the input folders")
    if output_state(out) == "dataset" and not (config.incremental or config.overwrite) \
            and storage.exists(dataset.join_index(out)):
        raise SystemExit(already_a_dataset(out))


def output_state(output: str) -> str:
    """``empty`` (absent, or an empty folder) or ``dataset`` (audiotok's marker, or an index
    written before markers existed).

    Raises:
        SystemExit: (one line) for anything else, naming what is there.
    """
    marker = storage.join(output, dataset.MARKER_NAME)
    try:
        if dataset.is_marker(storage.read_bytes(marker)):
            return "dataset"
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        pass
    fs, path = storage.filesystem(output)
    if storage.retrying(lambda: fs.isfile(path), f"looking up {output}"):
        raise SystemExit(f"--output {output} is a file, not a folder: refusing to write there")
    names = sorted(name for _, name in storage.list_folder(output))
    if not names:
        return "empty"
    if dataset.INDEX_NAME in names:
        try:
            if json.loads(storage.read_bytes(dataset.join_index(output))).get("format") == dataset.INDEX_FORMAT:
                return "dataset"
        except (ValueError, AttributeError, OSError):
            pass
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    raise SystemExit(f"--output {output} is neither empty nor an audiotok dataset (it holds {shown}): refusing to "
                     "write there; give a new or empty folder")


def claim_output(config: JobConfig, held_by: str) -> lease.Lease:
    """Marks the output as an audiotok dataset (its first write) and takes its lease (its
    second): both probe that the output is writable before anything is decoded.

    Raises:
        SystemExit: the output cannot be written (one line, with the store's answer).
        lease.LeaseHeld: another run is writing the dataset (after ``config.wait_for_lock_s``).
    """
    marker = storage.join(config.output, dataset.MARKER_NAME)
    try:
        if not storage.exists(marker):
            try:
                storage.write_atomic(marker, dataset.marker_bytes(), if_absent=True)
            except storage.PreconditionFailed:
                pass  # another run marked it first
        held = lease.Lease(config.output, command="tokenize", held_by=held_by,
                           ttl_s=lease.DEFAULT_TTL_S if held_by == "process" else lease.JOB_TTL_S)
        return held.acquire(wait_s=config.wait_for_lock_s)
    except (PermissionError, storage.TransientStorageError) as e:
        raise SystemExit(f"--output {config.output} cannot be written: {storage.redact(str(e))}") from None
    except OSError as e:
        if isinstance(e, (FileNotFoundError,)) or e.errno is None:
            raise
        raise SystemExit(f"--output {config.output} cannot be written: {storage.redact(str(e))}") from None


def with_fitted_codebooks(config: JobConfig, beam_options: PipelineOptions) -> JobConfig:
    """Fits (into OUTPUT/codebooks/) a codebook for each k-means tokenizer given none, and
    returns the config with the codebooks filled in."""
    specs = []
    changed = False
    for spec in registry.split_specs(config.tokenize.specs):
        tok = registry.create(spec)
        if isinstance(tok, KMeansTokenizer) and not tok.config.codebook:
            url = storage.absolute(storage.join(config.output, CODEBOOKS_DIR,
                                                f"{tok.name}-k{tok.config.k}.safetensors"))
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
    return registry.format_spec(name, options)


def with_absolute_locations(config: JobConfig) -> JobConfig:
    """``config`` with its tokenizers' local checkpoints and codebooks named by absolute paths
    (the specs travel to workers, whose working directory may be another)."""
    specs = registry.absolute_locations(config.tokenize.specs)
    if specs == config.tokenize.specs:
        return config
    return dataclasses.replace(config, tokenize=dataclasses.replace(config.tokenize, specs=specs))


def launch(config: JobConfig, beam_options: PipelineOptions, held: lease.Lease | None = None
           ) -> beam.runners.runner.PipelineResult:
    """Checks the output, takes its lease, fits missing codebooks and starts the job, without
    waiting for it (a Dataflow Flex Template launcher must exit once the job is submitted).

    Args:
        held: the lease, when the caller holds it (``run`` does, with a heartbeat). Without
            it the job gets a lease of its own, which its publishing step releases.

    Raises:
        SystemExit: the output or the device is refused (see :func:`check_output`).
        lease.LeaseHeld: another run is writing the dataset.
    """
    check_output(config)
    check_local_device(config.tokenize.device, beam_options)
    owned = held or claim_output(config, held_by="job")
    try:
        config = with_fitted_codebooks(with_absolute_locations(config), beam_options)
        with interpreter.startup():  # what building makes lives until the end (see interpreter)
            plan = plan_run(config, owner=owned.owner, release_lease=held is None)
            p = beam.Pipeline(options=beam_options)
            build(p, config, plan=plan, run_id=owned.owner)
        result = p.run()
    except BaseException:
        if held is None:
            owned.release()
        raise
    if held is None and PipelineState.is_terminal(result.state):
        owned.release()  # finished already (an in-process runner) or never submitted (a dry run)
    return result


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
    check_output(config)
    check_local_device(config.tokenize.device, beam_options)
    with claim_output(config, held_by="process").start_heartbeat() as held:
        result = launch(config, beam_options, held)
        result.wait_until_finish()
        counters = collect_counters(result)
        index = dataset.read_index(config.output)
        held.check()  # the vocabulary and the card describe the index this run published
        lm.write_vocab(config.output, index)
        card.write_card(config.output, index, max_shards=card.RUN_MAX_SHARDS)
        if config.gc_grace_s >= 0:
            removed = gc.collect_garbage(config.output, config.gc_grace_s)
            if removed:
                logger.info("deleted %d file(s) of versions replaced more than %.0f s ago", len(removed),
                            config.gc_grace_s)
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
    total = counters["files_matched"] - counters.get("inputs_duplicate", 0) + unmatched
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
        + (" (" + ", ".join(f"{r}: {n}" for r, n in t["failures_by_reason"].items()) + ")" if t["failures"] else "")
        + (f", {counters['inputs_duplicate']} listed more than once (read once)"
           if counters.get("inputs_duplicate") else ""),
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
    from audiotok.pipelines import options as opts  # the flags are built from this module's JobConfig

    args, beam_args = opts.parse(opts.TokenizeOptions, list(sys.argv[1:] if argv is None else argv),
                                 prog="audiotok tokenize")
    if args.tokenizer.strip() == "help":
        print_tokenizer_help()
        return 0
    if not args.output:
        raise SystemExit("audiotok tokenize: give --output URL")
    try:
        config = opts.job_config(args)
        beam_options = profiles.pipeline_options(args.profile, beam_args)
    except ValueError as e:
        raise SystemExit(f"audiotok tokenize: {e}") from None
    try:
        if not wait:
            launch(config, beam_options)
            return 0
        index, counters, wall_s = run(config, beam_options)
    except (lease.LeaseHeld, lease.LeaseLost) as e:
        print(f"audiotok tokenize: {e}", file=sys.stderr)
        return EXIT_BUSY
    except TooManyFailures as e:
        print(summary(e.index, e.counters, e.wall_s, config.output), file=sys.stderr)
        print(f"audiotok tokenize: {e}", file=sys.stderr)
        return 1
    print(summary(index, counters, wall_s, config.output), file=sys.stderr)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    interpreter.own_process()
    sys.exit(main())
