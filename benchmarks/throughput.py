"""Throughput of the tokenize job on this machine, against Lhotse measured in the same run.

The example corpus (9 files, 78 s, WAV/FLAC/MP3/Ogg-Vorbis/Opus/M4A) is copied ``--copies``
times into a temporary folder; then, in one process, one after the other:

* ``audiotok e2e``: the Beam job (``audiotok.pipelines.tokenize.run``: match -> decode -> downmix ->
  resample to 16 kHz -> 30 s windows -> ``logmel`` (80-dim log-mel, float16) -> WebDataset
  shards, index, dataset card), DirectRunner profile ``direct`` (``--multiprocess`` adds
  ``direct-multiprocess``, 2 worker processes). The ``one`` row runs it on one short file:
  what a run costs besides the audio.
* ``audiotok decode``: ``decode_ref`` + downmix + ``resample`` to 16 kHz, a plain loop over
  the files in this process, nothing written.
* ``lhotse e2e``, the peer baseline: ``Recording.from_file`` -> ``CutSet`` -> 30 s windows ->
  80-bin ``Fbank`` -> Lhotse Shar (``SharWriter``, the ``features`` field as numpy arrays),
  read back with ``CutSet.from_shar`` (untimed).
* ``lhotse decode``: ``Recording.from_file(...).resample(16000).load_audio()`` + downmix.

Lhotse's default audio backends cannot open every input (M4A/AAC here), so the Lhotse rows run
on the files it can open (``common``) and the audiotok rows run on ``common`` and on ``all``.
``vs lhotse`` is a row's x-real-time divided by that of the Lhotse row of the same stage.

Every row first gets one untimed warm-up pass over the 9 original files (imports, first-call
set-up, the decoder process server), then ``--repeats`` interleaved timed rounds; a row
reports its fastest round (``time.perf_counter``).

    python benchmarks/throughput.py                       # 30 copies (39 min of audio)
    python benchmarks/throughput.py --copies 20 --repeats 2 --json out.json
    python benchmarks/throughput.py --quick               # 1 copy, no warm-up: a smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import io
import json
import logging
import os
import platform
import shutil
import sys
import tarfile
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the repo's packages importable
    sys.path.insert(0, str(ROOT))

from audiotok.transforms import dataset  # noqa: E402
from audiotok.transforms.match import DEFAULT_EXCLUDE, is_excluded  # noqa: E402

logger = logging.getLogger("audiotok.benchmarks.throughput")

EXAMPLE_CORPUS = ROOT / "examples" / "corpus"
TARGET_RATE_HZ = 16000
SEGMENT_S = 30.0
MIN_SEGMENT_S = 1.0
N_MELS = 80
DEFAULT_COPIES = 30  # x 78 s = 39 min of audio

COMMON = "common"  # files both sides can open
ALL = "all"  # every file of the corpus
ONE = "one"  # the smallest file, once: what a run costs besides the audio


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one timed run returns: counts, audio seconds, wall and CPU seconds, other figures.

    ``cpu_s`` is this process's CPU time (all its threads); work done in other processes
    (``direct-multiprocess`` workers) is not in it.
    """

    files: int
    failed: int
    audio_s: float
    wall_s: float
    cpu_s: float
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


class Clock:
    """Wall seconds (``time.perf_counter``) and this process's CPU seconds since it was made."""

    def __init__(self) -> None:
        self._wall = time.perf_counter()
        self._cpu = time.process_time()

    def read(self) -> dict[str, float]:
        return {"wall_s": time.perf_counter() - self._wall, "cpu_s": time.process_time() - self._cpu}


# ---------------------------------------------------------------------------- corpus


def audio_files(root: Path) -> list[Path]:
    """The files under ``root`` that the tokenize job's default exclusions keep, sorted."""
    out = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and not is_excluded(str(path), DEFAULT_EXCLUDE):
            out.append(path)
    return out


def build_corpus(source: Path, dest: Path, copies: int, keep: Callable[[str], bool] = lambda rel: True) -> list[Path]:
    """Copies the audio files of ``source`` ``copies`` times into ``dest/copy-NNNN/<relative path>``.

    Args:
        source: folder with the original files.
        dest: created; must not hold files already.
        copies: how many times.
        keep: called with each file's path relative to ``source`` (POSIX); False skips it.

    Returns:
        The copied files, sorted.
    """
    if copies < 1:
        raise ValueError(f"copies must be >= 1. Found: {copies}")
    originals = [(p, p.relative_to(source).as_posix()) for p in audio_files(source)]
    originals = [(p, rel) for p, rel in originals if keep(rel)]
    out = []
    for i in range(copies):
        for path, rel in originals:
            target = dest / f"copy-{i:04d}" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            out.append(target)
    return sorted(out)


def dir_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------- audiotok


def run_audiotok(input_dir: Path, output_dir: Path, profile: str = "direct") -> Outcome:
    """The tokenize job (``logmel``, 30 s windows) over every file under ``input_dir``."""
    import torch

    from audiotok.pipelines import tokenize as job
    from audiotok.runners import profiles
    from audiotok.transforms.match import MatchConfig
    from audiotok.transforms.segment import SegmentConfig
    from audiotok.transforms.tokenize import TokenizeConfig

    config = job.JobConfig(
        output=str(output_dir), match=MatchConfig(patterns=(f"{input_dir}/**/*",)),
        segment=SegmentConfig(segment_s=SEGMENT_S, min_segment_s=MIN_SEGMENT_S),
        # 80 bands at 16 kHz by default; the Lhotse side's thread count (torch's setting is global
        # to the process: the job would otherwise set it to one, for both sides, mid-benchmark).
        tokenize=TokenizeConfig(specs="logmel", device="cpu", torch_threads=torch.get_num_threads()),
        overwrite=True)
    options = profiles.pipeline_options(profile, [])
    clock = Clock()
    index, counters, _ = job.run(config, options)
    elapsed = clock.read()
    totals = index["totals"]
    failed = int(totals["failures"])
    if "files_ok" in counters:
        files, audio_s = counters["files_ok"], counters.get("audio_ms", 0) / 1000
    else:  # a runner that reports no metrics: count from the shards (segment seconds, tails dropped)
        files, audio_s = _distinct_sources(output_dir, index), float(totals["audio_s"])
    return Outcome(files=int(files), failed=failed, audio_s=float(audio_s), **elapsed, extra={
        "samples": totals["samples"], "shards": totals["shards"], "segment_audio_s": totals["audio_s"],
        "bytes_written": totals["bytes"], "failures_by_reason": totals["failures_by_reason"]})


def _distinct_sources(output_dir: Path, index: dict) -> int:
    uris = set()
    for shard in dataset.shard_rows(str(output_dir), index):
        with tarfile.open(output_dir / shard["url"]) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    uris.add(json.load(tar.extractfile(member))["source"]["uri"])
    return len(uris)


def check_audiotok_output(output_dir: Path) -> dict[str, Any]:
    """Reads back the first shard: every ``logmel`` array is float16 [T, N_MELS]."""
    import numpy as np

    index = dataset.read_index(str(output_dir))
    first = next(dataset.shard_rows(str(output_dir), index), None)
    if first is None:
        raise RuntimeError(f"{output_dir}: the index lists no shard")
    arrays = 0
    with tarfile.open(output_dir / first["url"]) as tar:
        for member in tar:
            if member.name.endswith(".logmel.npy"):
                array = np.load(io.BytesIO(tar.extractfile(member).read()))
                if array.dtype != np.float16 or array.ndim != 2 or array.shape[1] != N_MELS:
                    raise RuntimeError(f"{member.name}: {array.dtype} {array.shape}, expected float16 [T, {N_MELS}]")
                arrays += 1
    if arrays != first["samples"]:
        raise RuntimeError(f"first shard holds {arrays} logmel arrays, the index says {first['samples']}")
    return {"samples": index["totals"]["samples"], "first_shard_arrays_checked": arrays}


def run_decode_only(paths: Sequence[Path]) -> Outcome:
    """``decode_ref`` + downmix + ``resample`` to 16 kHz for each file, one process."""
    from audiotok.transforms.decode import DecodeConfig, decode_ref, resample
    from audiotok.transforms.failures import AudiotokError
    from audiotok.transforms.records import AudioRef

    config = DecodeConfig()
    files = failed = 0
    audio_s = 0.0
    clock = Clock()
    for path in paths:
        try:
            decoded = decode_ref(AudioRef(uri=str(path)), config)  # already downmixed
        except AudiotokError:
            failed += 1
            continue
        resample(decoded.audio, decoded.sample_rate, TARGET_RATE_HZ)
        files += 1
        audio_s += decoded.duration_s
    return Outcome(files=files, failed=failed, audio_s=audio_s, **clock.read())


# ---------------------------------------------------------------------------- Lhotse


def have_lhotse() -> bool:
    try:
        import lhotse  # noqa: F401
    except ImportError:
        return False
    return True


def _recording_id(path: Path, root: Path) -> str:
    # Copies share file names: the id must carry the copy folder too.
    return path.relative_to(root).with_suffix("").as_posix().replace("/", "_")


def lhotse_can_open(path: Path) -> bool:
    """Whether Lhotse's default audio backends open ``path`` (reads its header, not the audio)."""
    from lhotse import Recording

    try:
        Recording.from_file(path)
    except Exception:  # AudioLoadingError, or whatever a backend raised: we only count it
        return False
    return True


def run_lhotse(paths: Sequence[Path], root: Path, output_dir: Path) -> Outcome:
    """Lhotse's recipe: recordings -> cuts -> 30 s windows -> 80-bin Fbank -> Shar, one process.

    Multi-channel cuts are downmixed (mean of channels) before Fbank, as audiotok does;
    Lhotse's own ``MultiCut.to_mono(mono_downmix=True)`` yields an in-memory recording that
    the Shar cut manifest cannot serialise.
    """
    import numpy as np
    from lhotse import CutSet, Fbank, FbankConfig, Recording, RecordingSet, fastcopy
    from lhotse.features.io import MemoryRawWriter
    from lhotse.shar import SharWriter

    output_dir.mkdir(parents=True, exist_ok=True)
    extractor = Fbank(FbankConfig(num_mel_bins=N_MELS))
    clock = Clock()
    recordings, failed, audio_s = [], 0, 0.0
    for path in paths:
        recording_id = _recording_id(path, root)
        try:
            recording = Recording.from_file(path, recording_id=recording_id)
        except Exception:  # AudioLoadingError and whatever a backend raised: counted as a failure
            failed += 1
            continue
        audio_s += recording.duration
        recordings.append(recording.resample(TARGET_RATE_HZ))
    cuts = (CutSet.from_manifests(recordings=RecordingSet.from_recordings(recordings))
            .cut_into_windows(duration=SEGMENT_S)
            .filter(lambda cut: cut.duration >= MIN_SEGMENT_S))
    written = 0
    with SharWriter(str(output_dir), fields={"features": "numpy"}, shard_size=1000, warn_unused_fields=False) as w:
        for cut in cuts:
            samples = cut.load_audio()  # float32 [channels, samples] at 16 kHz
            if samples.shape[0] > 1:
                samples = samples.mean(axis=0, keepdims=True, dtype=np.float32)
            features = extractor.extract_from_samples_and_store(
                samples=samples, storage=MemoryRawWriter(), sampling_rate=cut.sampling_rate,
                offset=cut.start, channel=0)
            w.write(fastcopy(cut, features=features))
            written += 1
    elapsed = clock.read()
    return Outcome(files=len(recordings), failed=failed, audio_s=audio_s, **elapsed,
                   extra={"samples": written, "bytes_written": dir_bytes(output_dir)})


def check_lhotse_output(output_dir: Path) -> dict[str, Any]:
    """Loads the Shar back with ``CutSet.from_shar``: every cut has [T, N_MELS] features."""
    from lhotse import CutSet

    cuts = 0
    frames = 0
    for cut in CutSet.from_shar(in_dir=str(output_dir)):
        features = cut.load_features()
        if features.ndim != 2 or features.shape[1] != N_MELS:
            raise RuntimeError(f"{cut.id}: features of shape {features.shape}, expected [T, {N_MELS}]")
        cuts += 1
        frames += int(features.shape[0])
    return {"cuts_loaded": cuts, "frames_loaded": frames}


def run_lhotse_decode_only(paths: Sequence[Path], root: Path) -> Outcome:
    """``Recording.from_file(...).resample(16000).load_audio()`` + downmix for each file."""
    import numpy as np
    from lhotse import Recording

    files = failed = 0
    audio_s = 0.0
    clock = Clock()
    for path in paths:
        recording_id = _recording_id(path, root)
        try:
            recording = Recording.from_file(path, recording_id=recording_id)
        except Exception:  # as in run_lhotse
            failed += 1
            continue
        samples = recording.resample(TARGET_RATE_HZ).load_audio()
        if samples.shape[0] > 1:
            samples.mean(axis=0, dtype=np.float32)
        files += 1
        audio_s += recording.duration
    return Outcome(files=files, failed=failed, audio_s=audio_s, **clock.read())


# ---------------------------------------------------------------------------- the run


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.is_available()
    except ImportError:
        pass
    for module in ("apache_beam", "lhotse", "soundfile", "av", "soxr"):
        try:
            info[module] = __import__(module).__version__
        except (ImportError, AttributeError):
            info[module] = None
    return info


class UnknownRowError(ValueError):
    """``rows`` names a row the plan does not have."""


@dataclasses.dataclass
class Bench:
    """One row of the table: what runs, on which files, and what it is compared with.

    Attributes:
        name: what runs (``label`` adds the file set).
        side: ``audiotok`` or ``lhotse``.
        stage: ``e2e`` or ``decode``; ratios compare rows of the same stage.
        file_set: ``common`` (files Lhotse opens), ``all``, or ``one`` (one short file: the
            fixed cost of a run).
        run: output folder -> Outcome (timed).
        warm: the same work on the 9 original files (untimed).
        outcomes: one per timed round.
    """

    name: str
    side: str
    stage: str
    file_set: str
    run: Callable[[Path], Outcome]
    warm: Callable[[Path], Any]
    outcomes: list[Outcome] = dataclasses.field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.name} ({self.file_set})"

    @property
    def best(self) -> Outcome:
        return min(self.outcomes, key=lambda o: o.wall_s)

    @property
    def x_realtime(self) -> float:
        best = self.best
        return best.audio_s / best.wall_s if best.wall_s > 0 else float("nan")


def plan_benches(source: Path, corpora: dict[str, tuple[Path, list[Path]]], lhotse: bool,
                 multiprocess: bool) -> list[Bench]:
    """The rows, in the order each round runs them."""
    originals = audio_files(source)
    benches = []

    def audiotok_e2e(file_set: str, profile: str) -> Bench:
        folder = corpora[file_set][0]
        name = "audiotok e2e" + (" multiprocess" if profile != "direct" else "")
        return Bench(name, "audiotok", "e2e", file_set, run=lambda out: run_audiotok(folder, out, profile),
                     warm=lambda out: run_audiotok(source, out, profile))

    common_folder, common_files = corpora[COMMON]
    if lhotse:
        benches.append(Bench("lhotse e2e", "lhotse", "e2e", COMMON,
                             run=lambda out: run_lhotse(common_files, common_folder, out),
                             warm=lambda out: run_lhotse(originals, source, out)))
    benches.append(audiotok_e2e(COMMON, "direct"))
    benches.append(audiotok_e2e(ALL, "direct"))
    benches.append(audiotok_e2e(ONE, "direct"))
    if multiprocess:
        benches.append(audiotok_e2e(COMMON, "direct-multiprocess"))
        benches.append(audiotok_e2e(ALL, "direct-multiprocess"))
    if lhotse:
        benches.append(Bench("lhotse decode", "lhotse", "decode", COMMON,
                             run=lambda out: run_lhotse_decode_only(common_files, common_folder),
                             warm=lambda out: run_lhotse_decode_only(originals, source)))
    for file_set in (COMMON, ALL):
        benches.append(Bench("audiotok decode", "audiotok", "decode", file_set,
                             run=lambda out, files=corpora[file_set][1]: run_decode_only(files),
                             warm=lambda out: run_decode_only(originals)))
    return benches


def measure(workdir: Path, copies: int, repeats: int = 1, warmup: bool = True, multiprocess: bool = False,
            lhotse: bool = True, source: Path = EXAMPLE_CORPUS, rows: Sequence[str] | None = None) -> dict[str, Any]:
    """Builds the corpora under ``workdir``, runs every row, checks the outputs.

    Args:
        rows: run only these rows, by label (``"audiotok e2e (common)"``); None: all.

    Raises:
        UnknownRowError: ``rows`` names a row that is not in the plan.

    Returns:
        A JSON-serialisable report: ``rows`` (one dict per row, with ``x_realtime`` and
        ``ratio_vs_lhotse``), ``audiotok_fixed_cost``, ``corpus``, ``machine``, ``checks``, ``date``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1. Found: {repeats}")
    lhotse = lhotse and have_lhotse()
    originals = audio_files(source)
    opens = {p.relative_to(source).as_posix(): (lhotse_can_open(p) if lhotse else True) for p in originals}
    smallest = min(originals, key=lambda p: p.stat().st_size).relative_to(source).as_posix()
    corpora = {}
    for file_set, n, keep in ((ALL, copies, lambda rel: True), (COMMON, copies, lambda rel: opens[rel]),
                              (ONE, 1, lambda rel: rel == smallest)):
        folder = workdir / f"corpus-{file_set}"
        corpora[file_set] = (folder, build_corpus(source, folder, n, keep=keep))
    out_root = workdir / "out"
    benches = plan_benches(source, corpora, lhotse, multiprocess)
    if rows is not None:
        labels = [b.label for b in benches]
        unknown = sorted(set(rows) - set(labels))
        if unknown:
            raise UnknownRowError(f"unknown row(s) {', '.join(unknown)}; known: {', '.join(labels)}")
        benches = [b for b in benches if b.label in rows]

    if warmup:  # imports, first-call set-up, the decoder forkserver: not what a long run pays per file
        done = set()
        for bench in benches:
            if (bench.name, bench.stage) in done:
                continue
            done.add((bench.name, bench.stage))
            logger.info("warm-up: %s", bench.name)
            bench.warm(out_root / "warmup")
            shutil.rmtree(out_root / "warmup", ignore_errors=True)

    checks: dict[str, Any] = {}
    for round_no in range(repeats):
        for bench in benches:
            out = out_root / f"{bench.name.replace(' ', '-')}-{bench.file_set}-{round_no}"
            logger.info("round %d/%d: %s (%s)", round_no + 1, repeats, bench.name, bench.file_set)
            outcome = bench.run(out)
            if outcome.files == 0:
                raise RuntimeError(f"{bench.name} ({bench.file_set}) processed no file ({outcome.failed} failed)")
            logger.info("  %.1f s of audio in %.2f s", outcome.audio_s, outcome.wall_s)
            bench.outcomes.append(outcome)
            if round_no == 0 and out.exists():  # untimed: does the output load back?
                checks[bench.label] = (
                    check_lhotse_output(out) if bench.side == "lhotse" else check_audiotok_output(out))
            shutil.rmtree(out, ignore_errors=True)

    unreadable = sorted(rel for rel, ok in opens.items() if not ok)
    baselines = {b.stage: b for b in benches if b.side == "lhotse"}
    rows = []
    for bench in benches:
        best = bench.best
        failed = best.failed + (len(unreadable) * copies if bench.side == "lhotse" else 0)
        baseline = baselines.get(bench.stage) if bench.file_set != ONE else None
        ratio = bench.x_realtime / baseline.x_realtime if baseline else None
        rows.append({
            "name": bench.name, "side": bench.side, "stage": bench.stage, "file_set": bench.file_set,
            "files": best.files, "failed": failed, "audio_s": round(best.audio_s, 3),
            "wall_s": round(best.wall_s, 4), "x_realtime": round(bench.x_realtime, 2),
            "ratio_vs_lhotse": round(ratio, 3) if ratio is not None else None,
            "walls_s": [round(o.wall_s, 4) for o in bench.outcomes],
            "cpu_s_this_process": round(best.cpu_s, 4), **best.extra})
    fixed_cost = None
    one = next((b for b in benches if b.file_set == ONE), None)
    if one is not None:
        fixed, marginal = one.best, {}
        for bench in benches:
            if bench.side == "audiotok" and bench.stage == "e2e" and bench.file_set != ONE:
                extra_wall = bench.best.wall_s - fixed.wall_s
                marginal[bench.label] = (
                    round((bench.best.audio_s - fixed.audio_s) / extra_wall, 2) if extra_wall > 0 else None)
        fixed_cost = {"file": smallest, "wall_s": round(fixed.wall_s, 3), "marginal_x_realtime": marginal}
    return {
        "benchmark": "throughput",
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_info(),
        "settings": {"copies": copies, "repeats": repeats, "warmup": warmup, "segment_s": SEGMENT_S,
                     "min_segment_s": MIN_SEGMENT_S, "n_mels": N_MELS, "sample_rate_hz": TARGET_RATE_HZ,
                     "timing": "fastest round by time.perf_counter; cpu_s_this_process excludes child "
                               "processes (audiotok's decoder processes, multiprocess workers)"},
        "corpus": {"source": str(source), "copies": copies, "files_all": len(corpora[ALL][1]),
                   "files_common": len(corpora[COMMON][1]), "bytes_all": dir_bytes(corpora[ALL][0]),
                   "one_file": smallest, "lhotse_unreadable": unreadable if lhotse else None},
        "rows": rows,
        "audiotok_fixed_cost": fixed_cost,
        "checks": checks,
    }


def format_table(report: dict[str, Any]) -> str:
    """The report as an aligned text table, with a header naming machine and corpus."""
    m, c = report["machine"], report["corpus"]
    lines = [
        f"throughput: {report['date']}, {m.get('cpu', '?')} ({m['cpu_count']} cores), "
        f"{'CUDA' if m.get('cuda') else 'no GPU'}, torch threads {m.get('torch_threads')}",
        f"corpus: example corpus x {c['copies']} = {c['files_all']} files ('all'); "
        f"{c['files_common']} that Lhotse opens ('common')"
        + (f"; Lhotse cannot open {', '.join(c['lhotse_unreadable'])}" if c.get("lhotse_unreadable") else ""),
        f"timing: fastest of {report['settings']['repeats']} round(s), "
        + ("after a warm-up pass" if report["settings"]["warmup"] else "no warm-up"),
        "",
    ]
    headers = ["name", "files", "failed", "audio s", "wall s", "x real time", "vs lhotse"]
    body = []
    for r in report["rows"]:
        ratio = r["ratio_vs_lhotse"]
        body.append([f"{r['name']} ({r['file_set']})", str(r["files"]), str(r["failed"]), f"{r['audio_s']:.1f}",
                     f"{r['wall_s']:.2f}", f"{r['x_realtime']:.{0 if r['x_realtime'] >= 10 else 1}f}x", f"{ratio:.2f}" if ratio is not None else "-"])
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(headers)]

    def fmt(cells: list[str]) -> str:
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(cells, widths)))

    lines.append(fmt(headers))
    lines.append("  ".join("-" * w for w in widths))
    lines.extend(fmt(b) for b in body)
    fixed = report["audiotok_fixed_cost"]
    lines.append("")
    lines.append("vs lhotse: this row's x real time / the Lhotse row of the same stage (e2e or decode).")
    if fixed:
        lines.append(f"audiotok e2e (one) is the fixed cost of a run ({fixed['file']}); without it: "
                     + ", ".join(f"{k} {v:.0f}x" for k, v in fixed["marginal_x_realtime"].items() if v is not None))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=None,
                        help=f"copies of the example corpus (default {DEFAULT_COPIES}: {DEFAULT_COPIES * 78 // 60} min)")
    parser.add_argument("--quick", action="store_true", help="1 copy, no warm-up: checks that everything runs")
    parser.add_argument("--repeats", type=int, default=1, help="timed rounds; each row reports its fastest")
    parser.add_argument("--multiprocess", action="store_true",
                        help="also run the job with the direct-multiprocess profile (2 worker processes)")
    parser.add_argument("--torch-threads", type=int, default=None, metavar="N",
                        help="torch.set_num_threads(N) for both sides, and OMP_NUM_THREADS=N for the processes "
                             "they start (default: torch's choice, one per core)")
    parser.add_argument("--no-lhotse", action="store_true", help="skip the Lhotse rows")
    parser.add_argument("--rows", metavar="LABELS", help="comma-separated row labels to run, e.g. "
                        "'lhotse e2e (common),audiotok e2e (common)' (default: all)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--workdir", metavar="DIR", help="where the corpus copies and outputs go "
                        "(default: a temporary folder, removed afterwards)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each step")
    args = parser.parse_args(argv)
    copies = args.copies if args.copies is not None else (1 if args.quick else DEFAULT_COPIES)
    if copies < 1 or args.repeats < 1:
        parser.error(f"--copies and --repeats must be >= 1. Found: {copies}, {args.repeats}")

    # Beam and the job log progress and platform notes; the table is what this script prints.
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO if args.verbose else logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning, module="lhotse")
    if args.torch_threads is not None:
        import torch

        torch.set_num_threads(args.torch_threads)
        # Child processes (multiprocess workers, decoder processes) start with the same setting.
        os.environ["OMP_NUM_THREADS"] = str(args.torch_threads)

    lhotse = not args.no_lhotse
    if lhotse and not have_lhotse():
        logger.warning("lhotse is not installed (pip install 'lhotse>=1.30'): no baseline rows")
        lhotse = False
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="audiotok-throughput-"))
    try:
        report = measure(workdir, copies, repeats=args.repeats, warmup=not args.quick,
                         multiprocess=args.multiprocess, lhotse=lhotse,
                         rows=[r.strip() for r in args.rows.split(",") if r.strip()] if args.rows else None)
    except UnknownRowError as e:
        parser.error(str(e))
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print(format_table(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
