"""Every audiotok flag lives here, as PipelineOptions subclasses.

The CLI parses these flags itself (so ``--help`` lists them); every other flag goes to
Beam untouched (``--runner``, ``--project``, ``--temp_location``, ...).
"""

from __future__ import annotations

import argparse

from apache_beam.options.pipeline_options import PipelineOptions

from audiotok.runners import profiles
from audiotok.transforms.decode import DecodeConfig
from audiotok.transforms.match import DEFAULT_EXCLUDE, MatchConfig
from audiotok.transforms.segment import SEGMENTERS, SegmentConfig
from audiotok.transforms.decode import DEFAULT_CHUNK_S
from audiotok.transforms.vad import VadConfig
from audiotok.transforms.shards import ShardConfig
from audiotok.transforms.tokenize import TokenizeConfig


def _csv(value: str) -> list[str]:
    return [v for v in (s.strip() for s in value.split(",")) if v]


def _add_segmenter_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("segmentation and long files (transforms/SEGMENTERS.md)")
    v = VadConfig()
    g.add_argument("--segmenter", default="fixed", choices=SEGMENTERS,
                   help="fixed windows (default), vad (Silero VAD) or energy (no model): the speech segmenters "
                        "leave non-speech out")
    g.add_argument("--vad-threshold", dest="vad_threshold", type=float, default=v.threshold,
                   help=f"vad: speech probability at which speech starts (default {v.threshold})")
    g.add_argument("--vad-energy-margin-db", dest="vad_energy_margin_db", type=float, default=v.energy_margin_db,
                   help=f"energy: dB above the noise floor at which speech starts (default {v.energy_margin_db})")
    g.add_argument("--vad-min-speech-s", dest="vad_min_speech_s", type=float, default=v.min_speech_s,
                   help=f"shorter bursts of speech are ignored (default {v.min_speech_s})")
    g.add_argument("--vad-min-silence-s", dest="vad_min_silence_s", type=float, default=v.min_silence_s,
                   help=f"a pause must last this long to split speech (default {v.min_silence_s})")
    g.add_argument("--vad-pad-s", dest="vad_pad_s", type=float, default=v.pad_s,
                   help=f"context kept around speech, seconds (default {v.pad_s})")
    g.add_argument("--vad-merge-gap-s", dest="vad_merge_gap_s", type=float, default=v.merge_gap_s,
                   help=f"stretches this close are merged while within --segment-s (default {v.merge_gap_s})")
    g.add_argument("--vad-batch-lanes", dest="vad_batch_lanes", type=int, default=v.batch_lanes,
                   help=f"vad: 16.4 s lanes per Silero batch (default {v.batch_lanes})")
    g.add_argument("--split-s", dest="split_s", type=float, default=600.0,
                   help="longer files are streamed and split into work items of about this many seconds over the "
                        "workers (default 600; 0: decode every file whole)")
    g.add_argument("--chunk-s", dest="chunk_s", type=float, default=DEFAULT_CHUNK_S,
                   help=f"seconds decoded at a time when streaming; memory, not results (default {DEFAULT_CHUNK_S:g})")


class InputOptions(PipelineOptions):
    """Which audio to read and how to decode and cut it."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("input")
        g.add_argument("--input", action="append", default=[], metavar="PATTERN",
                       help="file pattern or folder on any fsspec filesystem (local, file://, gs://, s3://); "
                            "'**' recurses; repeatable")
        g.add_argument("--manifest", action="append", default=[], metavar="URL",
                       help="JSON lines manifest: 'uri' plus optional id, text, speaker, language; repeatable")
        g.add_argument("--exclude", default=",".join(DEFAULT_EXCLUDE), metavar="GLOBS",
                       help="comma-separated basename globs that pattern matching skips (default: text and "
                            "metadata files, hidden files); '' skips nothing")
        g.add_argument("--segment-s", dest="segment_s", type=float, default=30.0,
                       help="segment length (fixed) or longest segment (vad, energy), seconds (default 30)")
        g.add_argument("--min-segment-s", dest="min_segment_s", type=float, default=1.0,
                       help="a shorter tail, file or stretch of speech is dropped (default 1)")
        _add_segmenter_args(parser)
        g.add_argument("--max-duration-s", dest="max_duration_s", type=float, default=4 * 3600.0,
                       help="longer inputs are dead-lettered as too_long, refused from the header where it "
                            "tells (default 14400; 0: no limit)")
        # Hostile and broken input: limits, repairs and isolation (README.md, "Bad input").
        d = DecodeConfig()
        g.add_argument("--min-sample-rate", dest="min_sample_rate", type=int, default=d.min_sample_rate,
                       help=f"lowest accepted source rate, Hz; lower is bad_sample_rate (default {d.min_sample_rate})")
        g.add_argument("--max-sample-rate", dest="max_sample_rate", type=int, default=d.max_sample_rate,
                       help=f"highest accepted source rate, Hz (default {d.max_sample_rate})")
        g.add_argument("--max-channels", dest="max_channels", type=int, default=d.max_channels,
                       help=f"more channels is too_many_channels (default {d.max_channels})")
        g.add_argument("--max-decoded-mb", dest="max_decoded_mb", type=int, default=d.max_decoded_bytes >> 20,
                       help="memory guard: a file whose decoded float32 samples would exceed this many MiB is "
                            f"stopped and dead-lettered as too_long (default {d.max_decoded_bytes >> 20})")
        g.add_argument("--truncated", choices=("reject", "keep"), default=d.truncated,
                       help="a file cut short: dead-letter it (reject, default) or keep what decodes")
        g.add_argument("--non-finite", dest="non_finite", choices=("reject", "zero"), default=d.non_finite,
                       help="NaN/Inf samples: dead-letter the file (reject, default) or replace them by 0")
        g.add_argument("--out-of-range", dest="out_of_range", choices=("scale", "clip", "reject"),
                       default=d.out_of_range,
                       help="float samples beyond [-1, 1]: scale the file to a peak of 1 (default), clip, or reject")
        g.add_argument("--silence", choices=("keep", "reject"), default=d.silence,
                       help="files whose peak is at or below --silence-threshold-db: keep (default) or reject")
        g.add_argument("--silence-threshold-db", dest="silence_threshold_dbfs", type=float,
                       default=d.silence_threshold_dbfs, help=f"dBFS (default {d.silence_threshold_dbfs:g})")
        g.add_argument("--clipping", choices=("keep", "reject"), default=d.clipping,
                       help="files with more than --clipping-fraction of samples at full scale: keep (default) "
                            "or reject")
        g.add_argument("--clipping-fraction", dest="clipping_fraction", type=float, default=d.clipping_fraction,
                       help=f"(default {d.clipping_fraction:g})")
        g.add_argument("--decode-isolation", dest="decode_isolation", choices=("process", "none"),
                       default=d.isolation,
                       help="process (default): decode in a reused child process, so a decoder crash or hang "
                            "costs one file (decoder_crash, timeout); none: in the worker")
        g.add_argument("--decode-timeout-s", dest="decode_timeout_s", type=float, default=d.timeout_s,
                       help=f"per-file decode time limit (default {d.timeout_s:g}; 0: none)")


class TokenizeOptions(InputOptions):
    """What to tokenize with and where the shards go."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("tokenize")
        g.add_argument("--output", required=False, metavar="URL", help="output folder (any fsspec URL)")
        g.add_argument("--tokenizer", default="logmel", metavar="SPECS",
                       help="comma-separated tokenizers, each 'name' or 'name[key=value,...]'; "
                            "'help' lists them (default logmel)")
        g.add_argument("--shard-max-samples", dest="shard_max_samples", type=int, default=1000,
                       help="samples per shard at most (default 1000)")
        g.add_argument("--shard-max-bytes", dest="shard_max_bytes", type=int, default=1 << 30,
                       help="bytes per shard at most (default 1 GiB)")
        g.add_argument("--batch-max-s", dest="batch_max_s", type=float, default=240.0,
                       help="seconds of audio per inference batch at most (default 240)")
        g.add_argument("--batch-max-items", dest="batch_max_items", type=int, default=64,
                       help="segments per inference batch at most (default 64)")
        g.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
        g.add_argument("--batch-buffer-s", dest="batch_buffer_s", type=float, default=None,
                       help="seconds of audio each worker thread holds to batch similar lengths together "
                            "(default 12 x --batch-max-s)")
        g.add_argument("--autocast", default="none", choices=["none", "bf16", "fp16"],
                       help="mixed precision for the tokenizers that declare it safe; the others run in float32 "
                            "(default none)")
        g.add_argument("--model-copies", dest="model_copies", type=int, default=None,
                       help="model copies per worker VM, shared by its SDK processes (default: one per GPU on CUDA, "
                            "one per process on CPU); 0: one per SDK process")
        g.add_argument("--torch-threads", dest="torch_threads", type=int, default=None,
                       help="torch intra-op threads per worker process for CPU inference (default 1: CPU workers "
                            "run one process per core; more threads spin against each other)")
        g.add_argument("--overwrite", action="store_true",
                       help="replace an existing dataset in --output (default: refuse)")
        g.add_argument("--incremental", action="store_true",
                       help="refresh the dataset in --output: process only new and changed inputs (and all of them "
                            "when the settings changed), exclude deleted ones, publish a new version")
        g.add_argument("--wait-for-lock", dest="wait_for_lock_s", type=float, default=0.0, metavar="S",
                       help="when another run is writing --output, wait up to S seconds for it to finish "
                            "(default 0: refuse at once)")
        g.add_argument("--gc-grace-s", dest="gc_grace_s", type=float, default=7 * 24 * 3600.0, metavar="S",
                       help="after publishing, delete the files of versions replaced more than S seconds ago "
                            "(readers holding an older index keep working until then; default 7 days; -1: never; "
                            "see audiotok gc)")
        g.add_argument("--files-per-bucket", dest="files_per_bucket", type=int, default=64,
                       help="inputs per shard group: each group is sorted and written by one worker, which makes "
                            "shards reproducible (default 64)")
        g.add_argument("--kmeans-max-frames", dest="kmeans_max_frames", type=int, default=200_000,
                       help="frames sampled to fit a k-means codebook on the fly (default 200000)")
        g.add_argument("--max-failure-fraction", dest="max_failure_fraction", type=float, default=0.5,
                       help="exit non-zero (after writing the dataset and failures) when more than this fraction "
                            "of the inputs has a dead-letter record: a sign of misconfiguration (default 0.5; "
                            "1: never)")
        g.add_argument("--profile", default="direct", choices=list(profiles.PROFILES), metavar="PROFILE",
                       help="runner profile (" + profiles.help_text() + "); other Beam flags pass through "
                            "and win over the profile's")


class FitKMeansOptions(InputOptions):
    """Fitting a k-means codebook from a corpus."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("fit-kmeans")
        g.add_argument("--tokenizer", default="mfcc-kmeans", metavar="SPEC",
                       help="the k-means tokenizer to fit a codebook for, e.g. 'mfcc-kmeans[k=100]'")
        g.add_argument("--output", required=False, metavar="URL", help="codebook file to write (.safetensors)")
        g.add_argument("--max-frames", dest="max_frames", type=int, default=200_000,
                       help="frames sampled from the corpus (default 200000)")
        g.add_argument("--frames-per-segment", dest="frames_per_segment", type=int, default=300,
                       help="frames a segment contributes at most (default 300)")
        g.add_argument("--seed", type=int, default=0, help="k-means seed (default 0)")
        g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
        g.add_argument("--profile", default="direct", help="runner profile (see tokenize)")


def parser(options_class: type[PipelineOptions], prog: str) -> argparse.ArgumentParser:
    """The parser of our flags for ``options_class`` (Beam's own flags are not in it)."""
    result = argparse.ArgumentParser(prog=prog, description=options_class.__doc__,
                                     epilog="Other flags (--runner, --project, ...) are passed to Apache Beam.")
    for cls in reversed(options_class.__mro__):
        if "_add_argparse_args" in vars(cls) and cls is not PipelineOptions:
            cls._add_argparse_args(result)
    return result


def parse(options_class: type[PipelineOptions], argv: list[str], prog: str) -> tuple[argparse.Namespace, list[str]]:
    """Parses our flags; returns (our values, the flags left for Beam)."""
    return parser(options_class, prog).parse_known_args(argv)


def match_config(args: argparse.Namespace) -> MatchConfig:
    return MatchConfig(patterns=tuple(args.input), manifests=tuple(args.manifest), exclude=tuple(_csv(args.exclude)))


def decode_config(args: argparse.Namespace) -> DecodeConfig:
    return DecodeConfig(
        max_duration_s=args.max_duration_s or None, min_sample_rate=args.min_sample_rate,
        max_sample_rate=args.max_sample_rate, max_channels=args.max_channels,
        max_decoded_bytes=args.max_decoded_mb << 20, truncated=args.truncated, non_finite=args.non_finite,
        out_of_range=args.out_of_range, silence=args.silence, silence_threshold_dbfs=args.silence_threshold_dbfs,
        clipping=args.clipping, clipping_fraction=args.clipping_fraction, isolation=args.decode_isolation,
        timeout_s=args.decode_timeout_s or None)


def segment_config(args: argparse.Namespace) -> SegmentConfig:
    vad = VadConfig(threshold=args.vad_threshold, energy_margin_db=args.vad_energy_margin_db,
                    min_speech_s=args.vad_min_speech_s, min_silence_s=args.vad_min_silence_s, pad_s=args.vad_pad_s,
                    merge_gap_s=args.vad_merge_gap_s, batch_lanes=args.vad_batch_lanes)
    return SegmentConfig(segment_s=args.segment_s, min_segment_s=args.min_segment_s, segmenter=args.segmenter,
                         vad=vad, split_s=args.split_s or None, chunk_s=args.chunk_s)


def shard_config(args: argparse.Namespace) -> ShardConfig:
    return ShardConfig(max_samples=args.shard_max_samples, max_bytes=args.shard_max_bytes,
                       files_per_bucket=args.files_per_bucket)


def tokenize_config(args: argparse.Namespace, specs: str | None = None) -> TokenizeConfig:
    return TokenizeConfig(specs=specs or args.tokenizer, batch_max_s=args.batch_max_s,
                          batch_max_items=args.batch_max_items, device=args.device, autocast=args.autocast,
                          model_copies=args.model_copies, batch_buffer_s=args.batch_buffer_s,
                          torch_threads=args.torch_threads)
