"""The ``audiotok`` command: subcommands, and the install hint when a job's extra is missing."""

from __future__ import annotations

import importlib.metadata

from audiotok.pipelines import cli

REQUIRES = [
    "numpy>=1.26",
    'apache-beam[gcp]<3,>=2.60; extra == "pipeline"',
    "torch<3,>=2.4 ; extra == 'pipeline'",
    'transformers>=5.0; extra == "models"',
]


def test_missing_for_extra_reads_the_extras_markers():
    present = {"numpy", "torch"}
    assert cli.missing_for_extra("pipeline", REQUIRES, installed=present.__contains__) == ["apache-beam"]
    assert cli.missing_for_extra("models", REQUIRES, installed=present.__contains__) == ["transformers"]
    assert cli.missing_for_extra("vad", REQUIRES, installed=present.__contains__) == []
    # Base requirements are pip's business, not an extra's.
    assert cli.missing_for_extra("pipeline", REQUIRES, installed=lambda name: name != "numpy") == []


def test_every_extra_the_cli_names_is_declared_by_setup_py():
    import ast
    import os

    from emulators import REPO_ROOT

    tree = ast.parse(open(os.path.join(REPO_ROOT, "setup.py"), encoding="utf-8").read())
    declared = {key.value for node in ast.walk(tree) if isinstance(node, ast.Dict)
                for key in node.keys if isinstance(key, ast.Constant)}
    assert {c.extra for c in cli.SUBCOMMANDS.values() if c.extra} <= declared


def test_a_job_without_its_extra_exits_with_a_one_line_hint(monkeypatch, capsys):
    requires = [*REQUIRES, 'audiotok-no-such-distribution>=1; extra == "pipeline"']
    monkeypatch.setattr(importlib.metadata, "requires", lambda name: requires if name == "audiotok" else None)
    assert cli.main(["tokenize", "--input", "x", "--output", "y"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("audiotok tokenize needs the pipeline extra (missing: audiotok-no-such-distribution): "
                   "pip install 'audiotok[pipeline]'")
    # The dataset tools need no extra: verify runs, and reports the missing dataset.
    assert cli.main(["verify", "/nonexistent/dataset"]) == 1
    out, err = capsys.readouterr()
    assert "index_unreadable" in out and "pip install" not in err


def test_unknown_subcommand_lists_the_known_ones(capsys):
    assert cli.main(["tokenise"]) == 2
    assert "fit-kmeans" in capsys.readouterr().err
