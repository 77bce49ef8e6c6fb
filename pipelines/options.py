"""Every audiotok flag lives here, as PipelineOptions subclasses.

The CLI parses these flags itself (so ``--help`` lists them); every other flag goes to
Beam untouched (``--runner``, ``--project``, ``--temp_location``, ...).
"""

from __future__ import annotations

import argparse

from apache_beam.options.pipeline_options import PipelineOptions

from runners import profiles
from transforms.decode import DecodeConfig
from transforms.match import DEFAULT_EXCLUDE, MatchConfig
from transforms.segment import SegmentConfig
from transforms.shards import ShardConfig
from transforms.tokenize import TokenizeConfig


def _csv(value: str) -> list[str]:
    return [v for v in (s.strip() for s in value.split(",")) if v]


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
                       help="segment length, seconds (default 30)")
        g.add_argument("--min-segment-s", dest="min_segment_s", type=float, default=1.0,
                       help="a shorter tail or file is dropped (default 1)")
        g.add_argument("--max-duration-s", dest="max_duration_s", type=float, default=4 * 3600.0,
                       help="longer inputs are dead-lettered as too_long (default 14400)")


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
        g.add_argument("--overwrite", action="store_true",
                       help="replace an existing dataset in --output (default: refuse)")
        g.add_argument("--incremental", action="store_true",
                       help="refresh the dataset in --output: process only new and changed inputs (and all of them "
                            "when the settings changed), exclude deleted ones, publish a new version")
        g.add_argument("--files-per-bucket", dest="files_per_bucket", type=int, default=64,
                       help="inputs per shard group: each group is sorted and written by one worker, which makes "
                            "shards reproducible (default 64)")
        g.add_argument("--kmeans-max-frames", dest="kmeans_max_frames", type=int, default=200_000,
                       help="frames sampled to fit a k-means codebook on the fly (default 200000)")
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


def parse(options_class: type[PipelineOptions], argv: list[str], prog: str) -> tuple[argparse.Namespace, list[str]]:
    """Parses our flags; returns (our values, the flags left for Beam)."""
    parser = argparse.ArgumentParser(prog=prog, description=options_class.__doc__,
                                     epilog="Other flags (--runner, --project, ...) are passed to Apache Beam.")
    for cls in reversed(options_class.__mro__):
        if "_add_argparse_args" in vars(cls) and cls is not PipelineOptions:
            cls._add_argparse_args(parser)
    return parser.parse_known_args(argv)


def match_config(args: argparse.Namespace) -> MatchConfig:
    return MatchConfig(patterns=tuple(args.input), manifests=tuple(args.manifest), exclude=tuple(_csv(args.exclude)))


def decode_config(args: argparse.Namespace) -> DecodeConfig:
    return DecodeConfig(max_duration_s=args.max_duration_s)


def segment_config(args: argparse.Namespace) -> SegmentConfig:
    return SegmentConfig(segment_s=args.segment_s, min_segment_s=args.min_segment_s)


def shard_config(args: argparse.Namespace) -> ShardConfig:
    return ShardConfig(max_samples=args.shard_max_samples, max_bytes=args.shard_max_bytes,
                       files_per_bucket=args.files_per_bucket)


def tokenize_config(args: argparse.Namespace, specs: str | None = None) -> TokenizeConfig:
    return TokenizeConfig(specs=specs or args.tokenizer, batch_max_s=args.batch_max_s,
                          batch_max_items=args.batch_max_items, device=args.device)
