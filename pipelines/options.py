"""Every audiotok flag lives here, as PipelineOptions subclasses, each flag bound to a field of
a config dataclass.

A flag restates nothing: its default is the field's default, its type the field's annotation,
its choices the constant the dataclass checks the value against, and its help the field's entry
in the dataclass's ``Attributes:`` docstring. Values are checked once, when the config is built
(``__post_init__``); an invalid one ends the command with that message.

The CLI parses these flags itself (so ``--help`` lists them); every other flag goes to
Beam untouched (``--runner``, ``--project``, ``--temp_location``, ...).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from typing import Any, Sequence

from apache_beam.options.pipeline_options import PipelineOptions

from audiotok.pipelines.fit_kmeans import FitConfig
from audiotok.pipelines.tokenize import JobConfig
from audiotok.runners import profiles
from audiotok.transforms import policy
from audiotok.transforms.decode import DecodeConfig
from audiotok.transforms.inference import AUTOCAST_CHOICES
from audiotok.transforms.match import MatchConfig
from audiotok.transforms.segment import SEGMENTERS, SegmentConfig
from audiotok.transforms.shards import ShardConfig
from audiotok.transforms.tokenize import TokenizeConfig
from audiotok.transforms.vad import VadConfig

MIB = 1 << 20


@dataclasses.dataclass(frozen=True)
class Flag:
    """One command-line flag, bound to one field of a config dataclass.

    Attributes:
        name: the option string (``--vad-threshold``); its value lands in ``args.vad_threshold``.
        config: the dataclass.
        field: the field of ``config`` the value goes to.
        scale: the field holds the flag's value times this (``--max-decoded-mb``: MiB -> bytes).
        zero_is_none: 0 on the command line is the field's None (``no limit``).
        choices: the allowed values: the constant the dataclass checks them against.
        repeat: given once per item of the field's tuple.
        comma_list: the field's tuple as one comma-separated value.
        metavar: the value's name in ``--help``.
        note: said after the field's description, for what only the command line has.
    """

    name: str
    config: type
    field: str
    scale: int = 1
    zero_is_none: bool = False
    choices: Sequence[str] | None = None
    repeat: bool = False
    comma_list: bool = False
    metavar: str | None = None
    note: str = ""

    @property
    def dest(self) -> str:
        return self.name.lstrip("-").replace("-", "_")

    def field_default(self) -> Any:
        """The dataclass's default for the field (``dataclasses.MISSING`` when it has none)."""
        f = _fields(self.config)[self.field]
        if f.default_factory is not dataclasses.MISSING:
            return f.default_factory()
        return f.default

    def flag_default(self) -> Any:
        """The field's default, as the command line writes it."""
        value = self.field_default()
        if value is dataclasses.MISSING:
            return [] if self.repeat else None
        if value is None:
            return 0 if self.zero_is_none else None
        if self.repeat:
            return list(value)
        if self.comma_list:
            return ",".join(value)
        return value // self.scale if self.scale != 1 else value

    def to_field(self, value: Any) -> Any:
        """A parsed command-line value -> the field's value."""
        if self.repeat:
            return tuple(value)
        if self.comma_list:
            return tuple(v for v in (s.strip() for s in value.split(",")) if v)
        if self.zero_is_none and not value:
            return None
        if value is not None and self.scale != 1:
            return value * self.scale
        return value

    def value_type(self) -> type:
        """The type of one value: the field's annotation, without None and tuple."""
        hint = typing.get_type_hints(self.config)[self.field]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            hint = args[0]
        elif typing.get_origin(hint) is tuple:
            hint = args[0]
        return hint

    def help(self) -> str:
        """What ``--help`` says of the flag (``description`` with argparse's ``%`` escaped)."""
        return self.description().replace("%", "%%")

    def description(self, note: bool = True) -> str:
        """The field's docstring entry, in the flag's terms, with the default (and ``note``, the
        command line's own remark, unless ``note`` is False)."""
        text = field_docs(self.config).get(self.field, "")
        if not text:
            raise ValueError(f"{self.config.__name__}.{self.field} has no entry in its docstring's Attributes: "
                             f"document it (that is {self.name}'s help)")
        if self.zero_is_none:
            text = re.sub(r"\bNone( or 0)?\b", "0", text)
        elif self.field_default() is None:
            text = re.sub(r"\bNone\b", "unset", text)
        if self.scale == MIB:
            text = re.sub(r"\bbytes\b", "MiB", text)
        # Other fields named in the text by their flags (names with an underscore only: a plain
        # word such as "silence" is also just a word).
        # Other fields named in the text by their flags (a field's own name in its text is a
        # reason code, and names without an underscore are plain words too).
        for field, flag in flag_names(self.config).items():
            if "_" in field and field != self.field:
                text = re.sub(rf"\b{field}\b", flag, text)
        text = text.rstrip(".")
        if self.note and note:
            text = f"{text}; {self.note}"
        default = self.flag_default()
        if self.field_default() is not dataclasses.MISSING and not (default is None or default is False or default == []):
            shown = f"{default:g}" if isinstance(default, float) else str(default)
            text += f" (default {shown})" if shown else " (default: none)"
        return text

    def add_to(self, group: argparse._ArgumentGroup) -> None:
        kwargs: dict[str, Any] = {"dest": self.dest, "help": self.help()}
        if self.repeat:
            kwargs.update(action="append", default=[])
        elif self.value_type() is bool:
            if self.field_default() is not False:
                raise ValueError(f"{self.name}: a switch needs a field that defaults to False")
            kwargs.update(action="store_true", default=False)
        else:
            kwargs.update(type=self.value_type(), default=self.flag_default())
        if self.choices is not None:
            kwargs["choices"] = list(self.choices)
        if self.metavar:
            kwargs["metavar"] = self.metavar
        group.add_argument(self.name, **kwargs)


def _fields(config: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(config)}


def field_docs(config: type) -> dict[str, str]:
    """Field name -> its description in the class docstring's ``Attributes:`` section (Google
    style; ``a, b: text`` describes both; RST ``code`` marks dropped)."""
    doc = config.__doc__ or ""
    lines = doc.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "Attributes:" or
                  line.strip().startswith('Attributes:')), None)
    if start is None:
        return {}
    first = lines[start].split("Attributes:", 1)[1]
    body = ([first] if first.strip() else []) + lines[start + 1:]
    indent = min((len(line) - len(line.lstrip()) for line in body if line.strip()), default=0)
    out: dict[str, str] = {}
    names: list[str] = []
    for line in body:
        if not line.strip():
            continue
        if len(line) - len(line.lstrip()) < indent:
            break
        entry = re.match(r"\s*([a-z_][a-z0-9_]*(?:\s*,\s*[a-z_][a-z0-9_]*)*):\s+(.*)", line)
        if entry and len(line) - len(line.lstrip()) == indent:
            names = [n.strip() for n in entry.group(1).split(",")]
            for n in names:
                out[n] = entry.group(2).strip()
        elif names:
            for n in names:
                out[n] += " " + line.strip()
    return {k: v.replace("``", "") for k, v in out.items()}


# ------------------------------------------------------------------ the flags, by what they configure

MATCH_FLAGS = (
    Flag("--input", MatchConfig, "patterns", repeat=True, metavar="PATTERN", note="repeatable"),
    Flag("--manifest", MatchConfig, "manifests", repeat=True, metavar="URL", note="repeatable"),
    Flag("--exclude", MatchConfig, "exclude", comma_list=True, metavar="GLOBS", note="comma-separated; '' skips nothing"),
)

SEGMENT_FLAGS = (
    Flag("--segment-s", SegmentConfig, "segment_s"),
    Flag("--min-segment-s", SegmentConfig, "min_segment_s"),
    Flag("--segmenter", SegmentConfig, "segmenter", choices=SEGMENTERS),
    Flag("--vad-threshold", VadConfig, "threshold"),
    Flag("--vad-energy-margin-db", VadConfig, "energy_margin_db"),
    Flag("--vad-min-speech-s", VadConfig, "min_speech_s"),
    Flag("--vad-min-silence-s", VadConfig, "min_silence_s"),
    Flag("--vad-pad-s", VadConfig, "pad_s"),
    Flag("--vad-merge-gap-s", VadConfig, "merge_gap_s"),
    Flag("--vad-batch-lanes", VadConfig, "batch_lanes"),
    Flag("--split-s", SegmentConfig, "split_s", zero_is_none=True),
    Flag("--chunk-s", SegmentConfig, "chunk_s"),
)

# Hostile and broken input: limits, repairs and isolation (README.md, "Bad input").
DECODE_FLAGS = (
    Flag("--max-duration-s", DecodeConfig, "max_duration_s", zero_is_none=True),
    Flag("--min-sample-rate", DecodeConfig, "min_sample_rate"),
    Flag("--max-sample-rate", DecodeConfig, "max_sample_rate"),
    Flag("--max-channels", DecodeConfig, "max_channels"),
    Flag("--max-decoded-mb", DecodeConfig, "max_decoded_bytes", scale=MIB),
    Flag("--truncated", DecodeConfig, "truncated", choices=policy.CHOICES["truncated"]),
    Flag("--non-finite", DecodeConfig, "non_finite", choices=policy.CHOICES["non_finite"]),
    Flag("--out-of-range", DecodeConfig, "out_of_range", choices=policy.CHOICES["out_of_range"]),
    Flag("--silence", DecodeConfig, "silence", choices=policy.CHOICES["silence"]),
    Flag("--silence-threshold-db", DecodeConfig, "silence_threshold_dbfs"),
    Flag("--clipping", DecodeConfig, "clipping", choices=policy.CHOICES["clipping"]),
    Flag("--clipping-fraction", DecodeConfig, "clipping_fraction"),
    Flag("--decode-isolation", DecodeConfig, "isolation", choices=policy.CHOICES["isolation"]),
    Flag("--decode-timeout-s", DecodeConfig, "timeout_s", zero_is_none=True),
    Flag("--decoder-processes", DecodeConfig, "decoder_processes"),
)

TOKENIZE_FLAGS = (
    Flag("--tokenizer", TokenizeConfig, "specs", metavar="SPECS",
         note="each 'name' or 'name[key=value,...]'; 'help' lists them"),
    Flag("--batch-max-s", TokenizeConfig, "batch_max_s"),
    Flag("--batch-max-items", TokenizeConfig, "batch_max_items"),
    Flag("--device", TokenizeConfig, "device"),
    Flag("--batch-buffer-s", TokenizeConfig, "batch_buffer_s"),
    Flag("--autocast", TokenizeConfig, "autocast", choices=AUTOCAST_CHOICES),
    Flag("--model-copies", TokenizeConfig, "model_copies"),
    Flag("--torch-threads", TokenizeConfig, "torch_threads"),
)

SHARD_FLAGS = (
    Flag("--shard-max-samples", ShardConfig, "max_samples"),
    Flag("--shard-max-bytes", ShardConfig, "max_bytes"),
    Flag("--files-per-bucket", ShardConfig, "files_per_bucket"),
    Flag("--separate-vectors", ShardConfig, "separate_vectors"),
)

JOB_FLAGS = (
    Flag("--output", JobConfig, "output", metavar="URL"),
    Flag("--overwrite", JobConfig, "overwrite"),
    Flag("--incremental", JobConfig, "incremental"),
    Flag("--wait-for-lock", JobConfig, "wait_for_lock_s", metavar="S"),
    Flag("--gc-grace-s", JobConfig, "gc_grace_s", metavar="S"),
    Flag("--kmeans-max-frames", JobConfig, "kmeans_max_frames"),
    Flag("--max-failure-fraction", JobConfig, "max_failure_fraction"),
)

FIT_FLAGS = (
    Flag("--tokenizer", FitConfig, "spec", metavar="SPEC"),
    Flag("--output", FitConfig, "output", metavar="URL"),
    Flag("--max-frames", FitConfig, "max_frames"),
    Flag("--frames-per-segment", FitConfig, "frames_per_segment"),
    Flag("--seed", FitConfig, "seed"),
    Flag("--device", FitConfig, "device"),
)

ALL_FLAGS = MATCH_FLAGS + SEGMENT_FLAGS + DECODE_FLAGS + TOKENIZE_FLAGS + SHARD_FLAGS + JOB_FLAGS + FIT_FLAGS


def flag_names(config: type) -> dict[str, str]:
    """Field of ``config`` -> the flag that sets it."""
    return {f.field: f.name for f in ALL_FLAGS if f.config is config}


def find_flag(name: str, options_class: type[PipelineOptions] | None = None) -> Flag:
    """The flag called ``name`` among ``options_class``'s (default: ``audiotok tokenize``'s)."""
    (found,) = [f for f in (options_class or TokenizeOptions).FLAGS if f.name == name]
    return found


def _add_profile_flag(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--profile", default=profiles.DEFAULT_PROFILE, choices=list(profiles.PROFILES),
                       metavar="PROFILE",
                       help="runner profile (" + profiles.help_text() + "); other Beam flags pass through and win "
                            "over the profile's")


def _add_group(parser: argparse.ArgumentParser, title: str, flags: Sequence[Flag]) -> argparse._ArgumentGroup:
    group = parser.add_argument_group(title)
    for flag in flags:
        flag.add_to(group)
    return group


class InputOptions(PipelineOptions):
    """Which audio to read and how to decode and cut it."""

    FLAGS = MATCH_FLAGS + SEGMENT_FLAGS + DECODE_FLAGS

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        _add_group(parser, "input", MATCH_FLAGS)
        _add_group(parser, "segmentation and long files (transforms/SEGMENTERS.md)", SEGMENT_FLAGS)
        _add_group(parser, "decoding: limits, repairs, isolation (README: Bad input)", DECODE_FLAGS)


class TokenizeOptions(InputOptions):
    """What to tokenize with and where the shards go."""

    FLAGS = InputOptions.FLAGS + TOKENIZE_FLAGS + SHARD_FLAGS + JOB_FLAGS

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        _add_group(parser, "tokenizers and inference", TOKENIZE_FLAGS)
        _add_group(parser, "shards", SHARD_FLAGS)
        _add_profile_flag(_add_group(parser, "the run", JOB_FLAGS))


class FitKMeansOptions(InputOptions):
    """Fitting a k-means codebook from a corpus."""

    FLAGS = InputOptions.FLAGS + FIT_FLAGS

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        _add_profile_flag(_add_group(parser, "fit-kmeans", FIT_FLAGS))


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


def config_values(config: type, args: argparse.Namespace) -> dict[str, Any]:
    """The fields of ``config`` that flags set, from parsed ``args`` (flags that ``args`` lacks
    are left out, so the dataclass's defaults apply)."""
    flags = {f.dest: f for f in ALL_FLAGS if f.config is config}
    return {f.field: f.to_field(getattr(args, dest)) for dest, f in flags.items() if hasattr(args, dest)}


def match_config(args: argparse.Namespace) -> MatchConfig:
    return MatchConfig(**config_values(MatchConfig, args))


def decode_config(args: argparse.Namespace) -> DecodeConfig:
    return DecodeConfig(**config_values(DecodeConfig, args))


def segment_config(args: argparse.Namespace) -> SegmentConfig:
    return SegmentConfig(vad=VadConfig(**config_values(VadConfig, args)), **config_values(SegmentConfig, args))


def shard_config(args: argparse.Namespace) -> ShardConfig:
    return ShardConfig(**config_values(ShardConfig, args))


def tokenize_config(args: argparse.Namespace) -> TokenizeConfig:
    return TokenizeConfig(**config_values(TokenizeConfig, args))


def job_config(args: argparse.Namespace) -> JobConfig:
    """The tokenize job's whole config from its parsed flags (ValueError naming a bad value)."""
    return JobConfig(match=match_config(args), decode=decode_config(args), segment=segment_config(args),
                     tokenize=tokenize_config(args), shards=shard_config(args), **config_values(JobConfig, args))


def fit_config(args: argparse.Namespace, **given: Any) -> FitConfig:
    """``audiotok fit-kmeans``'s FitConfig from its parsed flags; ``given`` fields win."""
    return FitConfig(**{**config_values(FitConfig, args), **given})
