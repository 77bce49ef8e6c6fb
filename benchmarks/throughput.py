"""Throughput of the tokenize job against Lhotse, of its decode stage against a bare decoding
loop, and over worker processes; every ratio from rows measured side by side in one run.

The corpus: the files of the example corpus that Lhotse opens (WAV, FLAC, MP3, Ogg/Vorbis,
Opus at 16-48 kHz, mono and stereo: 8 of its 9 files, 66 s) copied ``--copies`` times into a
temporary folder (default 110: 2.0 hours, 880 files). Rows, one after the other:

* end to end, each a whole process (interpreter start and imports included), timed from the
  parent: decode -> resample to 16 kHz -> 30 s windows -> 80-band log-mel -> shards on disk.

  - ``lhotse e2e``: Lhotse's recipe (``Recording`` -> ``cut_into_windows`` -> ``Fbank`` ->
    ``SharWriter``) in a fresh interpreter (``python benchmarks/throughput.py lhotse-e2e``);
  - ``audiotok e2e``: ``audiotok tokenize --tokenizer logmel`` (``python -m audiotok.pipelines.cli``),
    defaults;
  - ``audiotok e2e, N workers``: the same on N worker processes (``--profile
    direct-multiprocess --direct_num_workers=N``), on N cores;
  - ``audiotok e2e, 1 worker, 1 core``: that profile with one worker, the process tree held to
    one core (``sched_setaffinity``): what one worker of the row above does alone;
  - ``audiotok e2e, N threads`` and ``audiotok e2e, 1 thread, 1 core``: the same pair with
    ``--profile direct-threads`` (bundles on N threads of one process);
  - ``audiotok e2e, one file``: the default job on one 4 s file: what a run costs besides audio;
  - each e2e row again on a quarter of the copies (``... (small corpus)``): from the two sizes,
    the **steady state** of each configuration: its marginal rate (extra audio / extra wall
    seconds, what a corpus far larger than a run's fixed cost sees) and its fixed cost per run
    (the wall time at zero audio, extrapolated).

* the decode stage, in this process after a warm-up:

  - ``bare decode loop``: soundfile on the path (PyAV for what it cannot open), mean of the
    channels, soxr (HQ) to 16 kHz, file after file;
  - ``audiotok decode stage``: the job's own steps on the in-process runner:
    ``MatchAudio`` -> ``DecodeAudio`` (default config: process isolation, the input policy) ->
    soxr to 16 kHz.

``x real time`` = seconds of input audio / wall seconds. ``ratio`` = a row's x real time / its
baseline's (and in the steady-state table, a marginal rate / its baseline's): ``lhotse e2e`` for
the e2e rows, the one-core row of the same profile for the N-worker and N-thread rows, ``bare
decode loop`` for the decode stage. Every row gets an untimed warm-up
on the original files (imports, page cache) unless ``--quick``, then ``--repeats`` interleaved
rounds; a row reports its fastest. Both sides use ``--torch-threads`` (default 1) torch threads.
The load average before and after is in the report: read the ratios, not the speeds, on a busy
machine.

    python benchmarks/throughput.py                       # 110 copies: 2.0 h
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
import shutil
import subprocess
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

from audiotok.transforms.match import DEFAULT_EXCLUDE, is_excluded  # noqa: E402
from benchmarks import common  # noqa: E402

logger = logging.getLogger("audiotok.benchmarks.throughput")

EXAMPLE_CORPUS = ROOT / "examples" / "corpus"
TARGET_RATE_HZ = 16000
SEGMENT_S = 30.0
MIN_SEGMENT_S = 1.0
N_MELS = 80
DEFAULT_COPIES = 110  # x 66 s = 2.0 h of audio
ONE_FILE = "en/a/us_0001.wav"  # the fixed-cost row's file (4.1 s)
LHOTSE_E2E = "lhotse e2e"
E2E = "audiotok e2e"
ONE = "audiotok e2e, one file"
SMALL = " (small corpus)"  # the suffix of an e2e row run on a quarter of the copies
BARE = "bare decode loop"
STAGE = "audiotok decode stage"


# ---------------------------------------------------------------------------- corpus


def audio_files(root: Path) -> list[Path]:
    """The files under ``root`` that the tokenize job's default exclusions keep, sorted."""
    return [p for p in sorted(root.rglob("*")) if p.is_file() and not is_excluded(str(p), DEFAULT_EXCLUDE)]


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
    out = []
    for i in range(copies):
        for path, rel in originals:
            if keep(rel):
                target = dest / f"copy-{i:04d}" / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
                out.append(target)
    return sorted(out)


def have_lhotse() -> bool:
    try:
        import lhotse  # noqa: F401
    except ImportError:
        return False
    return True


def lhotse_can_open(path: Path) -> bool:
    """Whether Lhotse's default audio backends open ``path`` (reads its header, not the audio)."""
    from lhotse import Recording

    try:
        Recording.from_file(path)
    except Exception:  # AudioLoadingError, or whatever a backend raised: we only count it
        return False
    return True


def audio_seconds(paths: Sequence[Path]) -> float:
    """The corpus's seconds of audio, from the headers (every row is credited with the same)."""
    from audiotok.transforms.decode import probe_uri

    return sum(probe_uri(str(p)).duration_s for p in paths)


# ---------------------------------------------------------------------------- Lhotse


def _recording_id(path: Path, root: Path) -> str:
    # Copies share file names: the id must carry the copy folder too.
    return path.relative_to(root).with_suffix("").as_posix().replace("/", "_")


def run_lhotse(paths: Sequence[Path], root: Path, output_dir: Path) -> dict[str, Any]:
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
    recordings, failed = [], 0
    for path in paths:
        try:
            recording = Recording.from_file(path, recording_id=_recording_id(path, root))
        except Exception:  # AudioLoadingError and whatever a backend raised: counted as a failure
            failed += 1
            continue
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
    return {"files": len(recordings), "failed": failed, "samples": written}


def check_lhotse_output(output_dir: Path) -> dict[str, Any]:
    """Loads the Shar back with ``CutSet.from_shar``: every cut has [T, N_MELS] features."""
    from lhotse import CutSet

    cuts = frames = 0
    for cut in CutSet.from_shar(in_dir=str(output_dir)):
        features = cut.load_features()
        if features.ndim != 2 or features.shape[1] != N_MELS:
            raise RuntimeError(f"{cut.id}: features of shape {features.shape}, expected [T, {N_MELS}]")
        cuts += 1
        frames += int(features.shape[0])
    return {"samples": cuts, "frames": frames}


def check_audiotok_output(output_dir: Path) -> dict[str, Any]:
    """The index lists shards and no failure; the first shard's ``logmel`` arrays are float16 [T, N_MELS]."""
    import numpy as np

    from audiotok.transforms import dataset

    index = dataset.read_index(str(output_dir))
    rows = list(dataset.shard_rows(str(output_dir), index))
    if not rows or index["totals"]["failures"]:
        raise RuntimeError(f"{output_dir}: {len(rows)} shards, {index['totals']['failures']} failures")
    with tarfile.open(output_dir / rows[0]["url"]) as tar:
        for member in tar:
            if member.name.endswith(".logmel.npy"):
                array = np.load(io.BytesIO(tar.extractfile(member).read()))
                if array.dtype != np.float16 or array.ndim != 2 or array.shape[1] != N_MELS:
                    raise RuntimeError(f"{member.name}: {array.dtype} {array.shape}, expected float16 [T, {N_MELS}]")
    return {"samples": index["totals"]["samples"], "shards": len(rows)}


# ---------------------------------------------------------------------------- the decode stage


def bare_decode(paths: Sequence[Path]) -> int:
    """soundfile (PyAV for what it cannot open) + mean of channels + soxr HQ to 16 kHz; samples out."""
    import numpy as np
    import soundfile
    import soxr

    total = 0
    for path in paths:
        try:
            samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
            samples = samples.T
        except soundfile.LibsndfileError:
            samples, rate = _pyav_decode(path)
        mono = samples.mean(axis=0, dtype=np.float32) if samples.shape[0] > 1 else samples[0]
        total += soxr.resample(mono, rate, TARGET_RATE_HZ, quality="HQ").shape[0]
    return total


def _pyav_decode(path: Path):
    import av
    import numpy as np

    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="fltp")
        parts = [out.to_ndarray() for frame in container.decode(stream) for out in resampler.resample(frame)]
        parts += [out.to_ndarray() for out in resampler.resample(None)]
        return np.concatenate(parts, axis=1), stream.codec_context.sample_rate


def decode_stage(folder: Path) -> int:
    """The job's decode stage on the in-process runner (MatchAudio -> DecodeAudio -> soxr to 16 kHz);
    samples out."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from audiotok.transforms.decode import DecodeConfig, resample
    from audiotok.transforms.match import MatchAudio, MatchConfig
    from audiotok.transforms.read import DecodeAudio

    counted = folder.parent / f"{folder.name}.samples"
    with beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"])) as p:
        matched = p | "Match" >> MatchAudio(MatchConfig(patterns=(f"{folder}/**/*",)))
        decoded = matched["refs"] | "Decode" >> DecodeAudio(DecodeConfig())
        _ = (decoded.decoded
             | "Resample" >> beam.Map(lambda d: resample(d.audio, d.sample_rate, TARGET_RATE_HZ).shape[0])
             | "Sum" >> beam.CombineGlobally(sum)
             | "Write" >> beam.Map(lambda n: counted.write_text(str(n))))
    return int(counted.read_text())


# ---------------------------------------------------------------------------- rows


@dataclasses.dataclass
class Row:
    """One row: what runs, and what it is compared with.

    Attributes:
        name: the row's label.
        baseline: the row whose x real time this one's is divided by (None: none).
        command: the whole process to time (argv), for e2e rows; None for in-process rows.
        call: the in-process work, for the decode rows.
        cpus: CPUs the process tree may use (None: all).
        output: for e2e rows, the folder the process writes (checked after the first round).
        audio_s: seconds of input audio it is credited with.
        walls: one per timed round.
    """

    name: str
    baseline: str | None
    audio_s: float
    command: list[str] | None = None
    call: Callable[[], Any] | None = None
    cpus: set[int] | None = None
    output: Path | None = None
    check: Callable[[Path], dict] | None = None
    warm: Callable[[], Any] | None = None
    walls: list[float] = dataclasses.field(default_factory=list)
    checked: dict = dataclasses.field(default_factory=dict)

    @property
    def best_wall_s(self) -> float:
        return min(self.walls)

    @property
    def x_realtime(self) -> float:
        return self.audio_s / self.best_wall_s

    def run(self) -> None:
        if self.output is not None:
            shutil.rmtree(self.output, ignore_errors=True)
        start = time.perf_counter()
        if self.command is not None:
            _run_process(self.command, self.cpus)
        else:
            self.call()
        self.walls.append(time.perf_counter() - start)
        if self.check is not None and not self.checked:
            self.checked = self.check(self.output)


def _run_process(command: list[str], cpus: set[int] | None) -> None:
    def pin() -> None:
        if cpus is not None:
            os.sched_setaffinity(0, cpus)

    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, preexec_fn=pin)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} ... exited {done.returncode}:\n{done.stderr[-3000:]}")


def _tokenize_command(pattern: str, output: Path, threads: int, flags: Sequence[str] = ()) -> list[str]:
    return [sys.executable, "-m", "audiotok.pipelines.cli", "tokenize", "--input", pattern, "--output", str(output),
            "--tokenizer", "logmel", "--segment-s", str(SEGMENT_S), "--min-segment-s", str(MIN_SEGMENT_S),
            "--torch-threads", str(threads), "--overwrite", *flags]


def small_copies(copies: int) -> int:
    """Copies of the small corpus the steady state is measured against (0: none, too few copies)."""
    return copies // 4 if copies >= 4 else (1 if copies >= 2 else 0)


def plan_rows(work: Path, copies: int, threads: int, lhotse: bool, workers: int,
              source: Path = EXAMPLE_CORPUS) -> tuple[list[Row], dict[str, Any]]:
    """Builds the corpus under ``work``; returns the rows (in the order each round runs them) and
    the corpus's description. Each e2e row but the one-file row has a twin on the small corpus
    (:func:`small_copies`) when there are at least two copies."""
    originals = audio_files(source)
    keep = {p.relative_to(source).as_posix(): (lhotse_can_open(p) if lhotse else True) for p in originals}
    corpus = work / "corpus"
    files = build_corpus(source, corpus, copies, keep=lambda rel: keep[rel])
    warm_dir = work / "warm"
    build_corpus(source, warm_dir, 1, keep=lambda rel: keep[rel])
    one_dir = work / "one"
    one = build_corpus(source, one_dir, 1, keep=lambda rel: rel == ONE_FILE)
    audio_s = audio_seconds(files)
    n_small = small_copies(copies)
    small_dir = work / "small"
    small = build_corpus(source, small_dir, n_small, keep=lambda rel: keep[rel]) if n_small else []
    small_s = audio_seconds(small) if small else 0.0
    rows = []

    def e2e(name: str, baseline: str | None, flags: Sequence[str] = (), cpus: set[int] | None = None,
            folder: Path = corpus, seconds: float = audio_s) -> list[Row]:
        def row(name: str, baseline: str | None, folder: Path, seconds: float) -> Row:
            out = work / "out" / name.replace(" ", "-").replace(",", "").replace("(", "").replace(")", "")
            return Row(name, baseline, seconds, command=_tokenize_command(f"{folder}/**/*", out, threads, flags),
                       cpus=cpus, output=out, check=check_audiotok_output,
                       warm=lambda: _run_process(_tokenize_command(f"{warm_dir}/**/*", work / "out" / "warm",
                                                                   threads, flags), cpus))
        made = [row(name, baseline, folder, seconds)]
        if small and folder == corpus:
            made.append(row(name + SMALL, baseline and baseline + SMALL, small_dir, small_s))
        return made

    if lhotse:
        out = work / "out" / "lhotse"
        listing = work / "files.txt"
        listing.write_text("".join(f"{p}\n" for p in files))
        warm_listing = work / "warm-files.txt"
        warm_listing.write_text("".join(f"{p}\n" for p in audio_files(warm_dir)))
        command = [sys.executable, str(Path(__file__).resolve()), "lhotse-e2e", "--files", str(listing), "--root",
                   str(corpus), "--out", str(out), "--torch-threads", str(threads)]
        warm_command = [*command[:4], str(warm_listing), "--root", str(warm_dir), "--out", str(work / "out" / "lw"),
                        "--torch-threads", str(threads)]
        rows.append(Row(LHOTSE_E2E, None, audio_s, command=command, output=out, check=check_lhotse_output,
                        warm=lambda: _run_process(warm_command, None)))
        if small:
            small_listing = work / "small-files.txt"
            small_listing.write_text("".join(f"{p}\n" for p in small))
            rows.append(Row(LHOTSE_E2E + SMALL, None, small_s, command=[
                *command[:4], str(small_listing), "--root", str(small_dir), "--out", str(work / "out" / "lhotse-small"),
                "--torch-threads", str(threads)], output=work / "out" / "lhotse-small", check=check_lhotse_output,
                warm=lambda: None))
    rows += e2e(E2E, LHOTSE_E2E if lhotse else None)
    cpus = sorted(os.sched_getaffinity(0))
    if workers > 1 and len(cpus) >= workers:
        for profile, one_name, many_name in (("direct-multiprocess", "audiotok e2e, 1 worker, 1 core",
                                              f"audiotok e2e, {workers} workers"),
                                             ("direct-threads", "audiotok e2e, 1 thread, 1 core",
                                              f"audiotok e2e, {workers} threads")):
            rows += e2e(one_name, None, ["--profile", profile, "--direct_num_workers=1"], cpus={cpus[0]})
            rows += e2e(many_name, one_name, ["--profile", profile, f"--direct_num_workers={workers}"],
                        cpus=set(cpus[:workers]))
    rows += e2e(ONE, None, folder=one_dir, seconds=audio_seconds(one))
    rows.append(Row(BARE, None, audio_s, call=lambda: bare_decode(files), warm=lambda: bare_decode(originals)))
    rows.append(Row(STAGE, BARE, audio_s, call=lambda: decode_stage(corpus), warm=lambda: decode_stage(warm_dir)))
    described = {"copies": copies, "files": len(files), "audio_s": round(audio_s, 1),
                 "small": {"copies": n_small, "files": len(small), "audio_s": round(small_s, 1)},
                 "bytes": sum(p.stat().st_size for p in files),
                 "left_out": sorted(rel for rel, ok in keep.items() if not ok)}
    return rows, described


# ---------------------------------------------------------------------------- the run


class UnknownRowError(ValueError):
    """``rows`` names a row the plan does not have."""


def measure(workdir: Path, copies: int, repeats: int = 1, warmup: bool = True, lhotse: bool = True,
            threads: int = 1, workers: int | None = None,
            source: Path = EXAMPLE_CORPUS, rows: Sequence[str] | None = None) -> dict[str, Any]:
    """Builds the corpus under ``workdir``, runs every row, checks the outputs.

    Args:
        rows: run only these rows, by name; None: all.
        workers: worker processes of the N-worker row (default: the CPUs this process may use).

    Raises:
        UnknownRowError: ``rows`` names a row that is not in the plan.

    Returns:
        A JSON-serialisable report: ``rows`` (one dict per row, with ``x_realtime`` and ``ratio``),
        ``corpus``, ``machine``, ``load`` (before, after), ``settings``, ``date``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1. Found: {repeats}")
    lhotse = lhotse and have_lhotse()
    workers = workers or len(os.sched_getaffinity(0))
    plan, corpus = plan_rows(workdir, copies, threads, lhotse, workers, source)
    if rows is not None:
        unknown = sorted(set(rows) - {r.name for r in plan})
        if unknown:
            raise UnknownRowError(f"unknown row(s) {', '.join(unknown)}; known: {', '.join(r.name for r in plan)}")
        plan = [r for r in plan if r.name in rows]
    load_before = os.getloadavg()
    if warmup:
        for row in plan:
            logger.info("warm-up: %s", row.name)
            row.warm()
    for round_no in range(repeats):
        for row in plan:
            logger.info("round %d/%d: %s", round_no + 1, repeats, row.name)
            row.run()
            logger.info("  %.2f s", row.walls[-1])
    by_name = {r.name: r for r in plan}
    report_rows = []
    for row in plan:
        base = by_name.get(row.baseline) if row.baseline else None
        report_rows.append({
            "name": row.name, "baseline": base.name if base else None, "audio_s": round(row.audio_s, 2),
            "wall_s": round(row.best_wall_s, 3), "walls_s": [round(w, 3) for w in row.walls],
            "x_realtime": round(row.x_realtime, 1),
            "ratio": round(row.x_realtime / base.x_realtime, 3) if base else None,
            "cpus": sorted(row.cpus) if row.cpus else None, "command": row.command and _short(row.command, workdir),
            "output": row.checked or None})
    fixed = by_name.get(ONE)
    return {
        "benchmark": "throughput",
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": common.machine_info(("torch", "apache_beam", "lhotse", "soundfile", "av", "soxr")),
        "load": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]},
        "settings": {"copies": copies, "repeats": repeats, "warmup": warmup, "torch_threads": threads,
                     "workers": workers, "segment_s": SEGMENT_S,
                     "n_mels": N_MELS, "sample_rate_hz": TARGET_RATE_HZ},
        "corpus": corpus,
        "rows": report_rows,
        "steady_state": steady_state(plan),
        "fixed_cost_s": round(fixed.best_wall_s, 3) if fixed else None,
    }


def steady_state(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Each configuration's marginal rate and fixed cost, from its rows on the two corpus sizes.

    The marginal rate is (audio of the corpus - audio of the small corpus) / (wall - small wall):
    a run's fixed cost (interpreter, imports, pipeline, worker start-up, the card) cancels out;
    the fixed cost is the wall time extrapolated to no audio. ``ratio``: the marginal rate over
    the baseline configuration's.
    """
    by_name = {r.name: r for r in rows if r.walls}
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        twin = by_name.get(row.name + SMALL)
        if row.name not in by_name or twin is None:
            continue
        extra_wall, extra_audio = row.best_wall_s - twin.best_wall_s, row.audio_s - twin.audio_s
        if extra_wall <= 0 or extra_audio <= 0:
            out[row.name] = {"name": row.name, "baseline": row.baseline, "marginal_x_realtime": None,
                             "fixed_s": None, "ratio": None}
            continue
        rate = extra_audio / extra_wall
        out[row.name] = {"name": row.name, "baseline": row.baseline, "marginal_x_realtime": round(rate, 1),
                         "fixed_s": round(row.best_wall_s - row.audio_s / rate, 2), "ratio": None}
    for entry in out.values():
        base = out.get(entry["baseline"]) if entry["baseline"] else None
        if base and base["marginal_x_realtime"] and entry["marginal_x_realtime"]:
            entry["ratio"] = round(entry["marginal_x_realtime"] / base["marginal_x_realtime"], 3)
    return list(out.values())


def _short(command: list[str], workdir: Path) -> str:
    text = " ".join(command[1:]).replace(str(workdir), "WORK").replace(str(ROOT) + "/", "")
    return "python " + text


def _aligned(headers: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    """Columns padded to their widest cell: the first and last left-aligned, the others right."""
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(headers)]
    last = len(headers) - 1

    def line(cells):
        return "  ".join(x.ljust(w) if i in (0, last) else x.rjust(w) for i, (x, w) in enumerate(zip(cells, widths)))

    return [line(headers), "  ".join("-" * w for w in widths), *(line(b) for b in body)]


def format_table(report: dict[str, Any]) -> str:
    """The report as an aligned text table, with a header naming the machine, corpus and load."""
    m, c, load = report["machine"], report["corpus"], report["load"]
    lines = [
        f"throughput: {report['date']}, {m.get('cpu', '?')} ({m['cpu_count']} cores), "
        f"torch threads {report['settings']['torch_threads']}",
        f"corpus: example corpus x {c['copies']}: {c['files']} files, {c['audio_s'] / 3600:.2f} h"
        + (f" (left out, Lhotse cannot open it: {', '.join(c['left_out'])})" if c["left_out"] else ""),
        f"load average: {' '.join(map(str, load['before']))} before, {' '.join(map(str, load['after']))} after; "
        f"fastest of {report['settings']['repeats']} round(s)"
        + (", after a warm-up" if report["settings"]["warmup"] else ", no warm-up"),
        "",
    ]
    headers = ["row", "wall s", "x real time", "ratio", "vs"]
    body = [[r["name"], f"{r['wall_s']:.2f}", f"{r['x_realtime']:.0f}x" if r["x_realtime"] >= 10
             else f"{r['x_realtime']:.1f}x", f"{r['ratio']:.2f}" if r["ratio"] is not None else "-",
             r["baseline"] or ""] for r in report["rows"]]
    lines += _aligned(headers, body)
    steady = report.get("steady_state") or []
    if steady:
        small = c.get("small") or {}
        lines += ["", f"steady state: from the corpus and a small one ({small.get('files', '?')} files, "
                      f"{small.get('audio_s', 0) / 3600:.2f} h): marginal rate = extra audio / extra wall seconds; "
                      "fixed = wall at no audio"]
        heads = ["configuration", "marginal x real time", "fixed s", "ratio", "vs"]
        cells = [[e["name"], f"{e['marginal_x_realtime']:.0f}x" if e["marginal_x_realtime"] else "-",
                  f"{e['fixed_s']:.2f}" if e["fixed_s"] is not None else "-",
                  f"{e['ratio']:.2f}" if e["ratio"] is not None else "-", e["baseline"] or ""] for e in steady]
        lines += _aligned(heads, cells)
    if report["fixed_cost_s"] is not None:
        lines += ["", f"fixed cost of a run (the default job on one {ONE_FILE.rsplit('/', 1)[-1]}): "
                      f"{report['fixed_cost_s']:.2f} s"]
    return "\n".join(lines)


def _lhotse_main(argv: Sequence[str]) -> int:
    """``lhotse-e2e``: Lhotse's recipe on the listed files, in this (fresh) interpreter."""
    parser = argparse.ArgumentParser(prog="throughput.py lhotse-e2e")
    parser.add_argument("--files", required=True, help="a text file: one audio path per line")
    parser.add_argument("--root", required=True, help="the folder the paths are under (recording ids)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--torch-threads", type=int, default=1)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.torch_threads)
    warnings.filterwarnings("ignore", category=UserWarning, module="lhotse")
    paths = [Path(line) for line in Path(args.files).read_text().splitlines() if line]
    print(json.dumps(run_lhotse(paths, Path(args.root), Path(args.out))))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["lhotse-e2e"]:
        return _lhotse_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=None,
                        help=f"copies of the example corpus's files (default {DEFAULT_COPIES}: 2.0 h)")
    parser.add_argument("--quick", action="store_true", help="1 copy, no warm-up: checks that everything runs")
    parser.add_argument("--repeats", type=int, default=1, help="timed rounds; each row reports its fastest")
    parser.add_argument("--torch-threads", type=int, default=1, metavar="N",
                        help="torch threads on both sides (default 1; OMP_NUM_THREADS for the processes too)")
    parser.add_argument("--workers", type=int, default=None,
                        help="workers (processes, threads) of the N-worker rows (default: the cores this process "
                             "may use)")
    parser.add_argument("--no-lhotse", action="store_true", help="skip the Lhotse row")
    parser.add_argument("--rows", metavar="NAMES", help="'|'-separated row names to run (default: all)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--workdir", metavar="DIR", help="where the corpus copies and outputs go "
                        "(default: a temporary folder, removed afterwards)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each step")
    args = parser.parse_args(argv)
    copies = args.copies if args.copies is not None else (1 if args.quick else DEFAULT_COPIES)
    if copies < 1 or args.repeats < 1:
        parser.error(f"--copies and --repeats must be >= 1. Found: {copies}, {args.repeats}")
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO if args.verbose else logging.WARNING)
    os.environ["OMP_NUM_THREADS"] = str(args.torch_threads)
    lhotse = not args.no_lhotse
    if lhotse and not have_lhotse():
        logger.warning("lhotse is not installed (pip install 'lhotse>=1.30'): no Lhotse row")
        lhotse = False
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="audiotok-throughput-"))
    try:
        report = measure(workdir, copies, repeats=args.repeats, warmup=not args.quick, lhotse=lhotse,
                         threads=args.torch_threads, workers=args.workers,
                         rows=[r.strip() for r in args.rows.split("|") if r.strip()] if args.rows else None)
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
