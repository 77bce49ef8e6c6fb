"""examples/train_tiny_lm.py: a tiny causal LM trains on packed rows of a real run's shards."""

from __future__ import annotations

import importlib.util
import math

import pytest

import dataset_fixtures as fx
from audiotok.transforms import lm

torch = pytest.importorskip("torch")

SCRIPT = fx.REPO / "examples" / "train_tiny_lm.py"


def _module():
    spec = importlib.util.spec_from_file_location("train_tiny_lm", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_loss_falls_on_a_fixed_batch_of_the_example_run():
    train = _module()
    out = fx.example_run()
    vocab = lm.read_vocab(out)
    losses = train.train(out, ["mfcc-kmeans"], steps=20, context_len=64, batch_size=4, seed=0)
    assert len(losses) == 20 and all(math.isfinite(x) for x in losses)
    # Small initial logits: the first loss is that of a uniform guess over the vocabulary.
    assert losses[0] == pytest.approx(math.log(vocab.size), abs=0.5)
    assert losses[-1] < 0.75 * losses[0]
    assert sum(losses[-5:]) < sum(losses[:5])


def test_attention_stays_inside_documents():
    train = _module()
    torch.manual_seed(0)
    model = train.TinyGPT(vocab_size=10, context_len=6).eval()
    tokens = torch.tensor([[1, 2, 3, 4, 5, 6]])
    positions = torch.tensor([[0, 1, 2, 0, 1, 2]])
    docs = torch.tensor([[0, 0, 0, 1, 1, 1]])
    other = torch.tensor([[7, 8, 9, 4, 5, 6]])  # the first document changed
    with torch.no_grad():
        a = model(tokens, positions, docs)
        b = model(other, positions, docs)
    torch.testing.assert_close(a[0, 3:], b[0, 3:])  # the second document does not see the first
    assert not torch.allclose(a[0, :3], b[0, :3])


def test_command_line(capsys):
    # In-process: a subprocess would spend seconds importing torch again.
    train = _module()
    out = fx.example_run()
    assert train.main([out, "--streams", "mfcc-kmeans", "--steps", "3", "--context-len", "32",
                       "--batch-size", "2", "--pattern", "delay"]) == 0
    assert "over 3 steps" in capsys.readouterr().out
