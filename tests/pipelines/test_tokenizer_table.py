"""The README's tokenizer table and ``--tokenizer help``: built from metadata, no weights."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from audiotok.pipelines import tokenizer_table
from audiotok.transforms.tokenizers import registry

ROOT = Path(__file__).resolve().parents[2]


def test_every_registered_stream_has_a_row():
    table = tokenizer_table.tokenizer_table_markdown()
    for name in registry.entries():
        assert f"`{name}`" in table
    for name in ("encodec-24k", "encodec-48k", "dac-16k", "dac-24k", "dac-44k", "mimi", "snac-24k",
                 "hubert-l9-km500", "wavlm-kmeans", "wav2vec2-kmeans", "hubert-emb", "wavlm-emb", "wav2vec2-emb"):
        assert name in registry.entries()


def test_rates_and_sizes_come_from_the_stream_specs():
    rows = {r["stream"]: r for r in tokenizer_table.tokenizer_rows()}
    encodec = rows["encodec-24k"]
    assert (encodec["frames_per_s"], encodec["tokens_per_s"]) == (75.0, 600.0)
    assert encodec["bytes_per_hour"] == 75 * 8 * 2 * 3600  # int16 [8, T]
    assert rows["hubert-emb"]["bytes_per_hour"] == 50 * 768 * 2 * 3600  # float16 [T, 768]
    assert rows["hubert-l9-km500"]["tokens_per_s"] == 50.0
    assert rows["mimi"]["tokens_per_s"] == 100.0
    assert (rows["logmel"]["frame_centres"], rows["mfcc-kmeans"]["frame_centres"]) == ("10 i", "10 i")
    assert rows["hubert-emb"]["frame_centres"] == "12.5 + 20 i" and rows["mimi"]["frame_centres"] == "40 + 80 i"
    assert {r["stream"] for r in rows.values() if r["tokenizer"] == "snac-24k"} == {
        "snac-24k-s0", "snac-24k-s1", "snac-24k-s2"}


def test_help_and_table_need_no_model_library():
    """Registered names build from metadata: neither transformers nor snac is imported."""
    code = ("import sys; from audiotok.transforms.tokenizers import registry; from audiotok.pipelines import tokenizer_table; "
            "registry.help_table(); tokenizer_table.tokenizer_table_markdown(); "
            "print(sorted(m for m in ('transformers', 'snac', 'huggingface_hub') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_readme_table_is_the_generated_one():
    """The README's copy cannot drift from the registry: regenerate it with --write. (In a fresh
    process: test modules register tokenizers of their own in this one.)"""
    done = subprocess.run([sys.executable, "-m", "audiotok.pipelines.tokenizer_table", "--check", "README.md"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
