"""The command-line flags come from the config dataclasses: defaults, types, choices and help are
the fields'; values reach the configs; bad values are refused by the dataclasses' own checks."""

from __future__ import annotations

import ast
import dataclasses

import pytest

from audiotok.pipelines import fit_kmeans, options, tokenize
from audiotok.runners import profiles
from audiotok.transforms import policy
from audiotok.transforms.decode import DecodeConfig
from audiotok.transforms.match import MatchConfig
from audiotok.transforms.segment import SegmentConfig
from audiotok.transforms.shards import ShardConfig
from audiotok.transforms.tokenize import TokenizeConfig
from audiotok.transforms.vad import VadConfig


def parse(*argv: str, options_class=options.TokenizeOptions):
    args, beam = options.parse(options_class, list(argv), prog="t")
    assert beam == []
    return args


def test_no_flags_give_the_dataclasses_defaults():
    args = parse("--input", "x", "--output", "y")
    assert options.decode_config(args) == DecodeConfig()
    assert options.segment_config(args) == SegmentConfig()
    assert options.tokenize_config(args) == TokenizeConfig()
    assert options.shard_config(args) == ShardConfig()
    assert options.match_config(args) == MatchConfig(patterns=("x",))
    assert options.job_config(args) == tokenize.JobConfig(output="y", match=MatchConfig(patterns=("x",)))
    assert args.profile == profiles.DEFAULT_PROFILE
    fit = parse("--input", "x", "--output", "k.safetensors", options_class=options.FitKMeansOptions)
    assert options.fit_config(fit) == fit_kmeans.FitConfig(output="k.safetensors")


@pytest.mark.parametrize("flag", options.ALL_FLAGS, ids=lambda f: f"{f.config.__name__}-{f.name}")
def test_every_flag_defaults_to_its_field_and_has_the_fields_help(flag):
    default = flag.field_default()
    if default is not dataclasses.MISSING:
        assert flag.to_field(flag.flag_default()) == default
    docs = options.field_docs(flag.config)
    assert docs.get(flag.field), f"{flag.config.__name__}.{flag.field} is undocumented"
    assert flag.help()


def test_options_py_writes_no_default_of_its_own():
    """Every add_argument default is computed (from a field, or the profiles module): none is a
    literal, so none can drift from the dataclass."""
    tree = ast.parse(open(options.__file__, encoding="utf-8").read())
    literal = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Call)
               and getattr(node.func, "attr", "") == "add_argument"
               for kw in node.keywords if kw.arg in ("default", "choices") and isinstance(kw.value, ast.Constant)]
    assert literal == []


def test_choices_are_the_constants_the_dataclasses_check():
    actions = {a.option_strings[0]: a for a in options.parser(options.TokenizeOptions, "t")._actions
               if a.option_strings}
    for flag, field in (("--truncated", "truncated"), ("--non-finite", "non_finite"),
                        ("--out-of-range", "out_of_range"), ("--decode-isolation", "isolation")):
        assert tuple(actions[flag].choices) == policy.CHOICES[field]
    assert tuple(actions["--segmenter"].choices) == ("fixed", "vad", "energy")
    assert tuple(actions["--profile"].choices) == tuple(profiles.PROFILES)


def test_values_reach_the_configs_in_the_fields_units():
    args = parse("--input", "a", "--input", "b", "--manifest", "m.jsonl", "--exclude", "*.txt, *.md",
                 "--output", "o", "--max-decoded-mb", "100", "--max-duration-s", "0", "--decode-timeout-s", "0",
                 "--split-s", "0", "--segmenter", "energy", "--vad-pad-s", "0.2", "--vad-batch-lanes", "4",
                 "--silence-threshold-db", "-70", "--decode-isolation", "none", "--tokenizer", "mfcc-kmeans",
                 "--torch-threads", "2", "--model-copies", "0", "--shard-max-bytes", "4096", "--incremental",
                 "--wait-for-lock", "30", "--max-failure-fraction", "0.25")
    job = options.job_config(args)
    assert job.match == MatchConfig(patterns=("a", "b"), manifests=("m.jsonl",), exclude=("*.txt", "*.md"))
    assert job.decode == DecodeConfig(max_decoded_bytes=100 << 20, max_duration_s=None, timeout_s=None,
                                      silence_threshold_dbfs=-70.0, isolation="none")
    assert job.segment == SegmentConfig(split_s=None, segmenter="energy", vad=VadConfig(pad_s=0.2, batch_lanes=4))
    assert job.tokenize == TokenizeConfig(specs="mfcc-kmeans", torch_threads=2, model_copies=0)
    assert job.shards == ShardConfig(max_bytes=4096)
    assert (job.output, job.incremental, job.overwrite, job.wait_for_lock_s, job.max_failure_fraction) == (
        "o", True, False, 30.0, 0.25)
    assert options.match_config(parse("--input", "a", "--exclude", "")).exclude == ()


def test_a_bad_value_is_refused_by_the_dataclass_with_its_message(capsys):
    with pytest.raises(SystemExit, match=r"audiotok tokenize: threshold must be in \(0.15, 1\)"):
        tokenize.main(["--input", "x", "--output", "y", "--vad-threshold", "2"])
    with pytest.raises(SystemExit, match="give at least one input pattern or manifest"):
        tokenize.main(["--output", "y"])
    with pytest.raises(SystemExit) as e:  # a value outside the choices: argparse names the flag
        tokenize.main(["--input", "x", "--output", "y", "--segmenter", "words"])
    assert e.value.code == 2 and "--segmenter" in capsys.readouterr().err


def test_help_names_other_fields_by_their_flags_and_shows_the_fields_units():
    helps = {f.name: f.help() for f in options.ALL_FLAGS}
    assert "--silence-threshold-db" in helps["--silence"]
    assert "MiB" in helps["--max-decoded-mb"] and "(default 2048)" in helps["--max-decoded-mb"]
    assert "0: no limit" in helps["--max-duration-s"] and "None" not in helps["--max-duration-s"]
    assert helps["--model-copies"].startswith("unset: ")
    assert "(default 0)" in helps["--seed"]


def test_field_docs_read_google_style_attributes():
    docs = options.field_docs(DecodeConfig)
    assert docs["min_sample_rate"] == docs["max_sample_rate"] == "accepted source rates, Hz (bad_sample_rate)."
    assert docs["timeout_s"].startswith("time limit of one decoder request") and docs["timeout_s"].endswith("killed.")
    assert options.field_docs(fit_kmeans.FitConfig)["seed"] == "k-means seed."
