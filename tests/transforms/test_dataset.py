"""The dataset side imports neither Beam nor torch: trainers read datasets without the job's stack."""

from __future__ import annotations

import subprocess
import sys

import pytest

from audiotok.transforms import dataset

TRAINER_MODULES = ("audiotok.transforms.dataset", "audiotok.transforms.reader", "audiotok.transforms.lm",
                   "audiotok.transforms.card", "audiotok.pipelines.verify", "audiotok.pipelines.inspect")


@pytest.mark.parametrize("module", TRAINER_MODULES)
def test_the_dataset_side_imports_no_beam_and_no_torch(module):
    code = (f"import sys, {module}; "
            "print(sorted(m for m in ('apache_beam', 'torch', 'torchaudio') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_keys_name_their_source():
    assert dataset.source_of_key("clip_01-0123456789-000030000") == "0123456789"
    assert dataset.source_of_key("nohash") == ""
    assert dataset.is_live("a-0123456789-000000000", {"excluded_sources": ["abcdefabcd"]})
    assert not dataset.is_live("a-0123456789-000000000", {"excluded_sources": ["0123456789"]})
    assert dataset.is_live("a-0123456789-000000000", {})


@pytest.mark.parametrize("key", ["", "a.b", "../x", "a/b", "x" * 201, "é"])
def test_unsafe_keys_are_refused(key):
    with pytest.raises(ValueError, match="unsafe sample key"):
        dataset.check_key(key)
