"""Train a tiny GPT-style language model on an audiotok dataset, on CPU, for a few steps.

The point is the plumbing, not the model: packed rows from ``audiotok.transforms.reader.lm_dataset``
(tokens, document ids, positions, next-token targets) go through a 2-layer, 32-wide causal
transformer whose attention stays inside each document.

    python -m audiotok.pipelines.cli tokenize --input 'examples/corpus/**/*' --output /tmp/o8 --tokenizer logmel,mfcc-kmeans
    python examples/train_tiny_lm.py /tmp/o8 --streams mfcc-kmeans --steps 20
    python examples/train_tiny_lm.py /tmp/o8 --streams mfcc-kmeans --steps 50 --stream-batches --workers 2

``--fixed-batch`` (the default) trains on one batch over and over, so the loss must fall:
a quick check that ids, targets and masks line up. ``--stream-batches`` reads new rows every
step through a DataLoader (shards split across its workers).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import sys
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F
from torch import nn

from audiotok.transforms import dataset, lm, reader, storage

logger = logging.getLogger("train_tiny_lm")


class Block(nn.Module):
    """Pre-norm transformer block: attention under a given mask, then an MLP."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim must be a multiple of heads. Found dim={dim}, heads={heads}")
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """x: float [B, L, D]; allowed: bool [B, 1, L, L] (True: query i may attend to key j)."""
        b, length, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, length, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, length, d))
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    """tokens int [B, L] -> logits float [B, L, vocab_size]; learned positions (reset per document)."""

    def __init__(self, vocab_size: int, context_len: int, dim: int = 32, layers: int = 2, heads: int = 2):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, dim)
        self.pos = nn.Embedding(context_len, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        self.head.weight = self.tok.weight  # tied embeddings
        for emb in (self.tok, self.pos):
            nn.init.normal_(emb.weight, std=0.02)  # small logits: the first loss is about ln(vocab_size)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, document_ids: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        same = document_ids[:, :, None] == document_ids[:, None, :]
        causal = torch.ones(length, length, dtype=torch.bool, device=tokens.device).tril()
        # Padding (document -1) attends to itself only, so no softmax row is empty.
        eye = torch.eye(length, dtype=torch.bool, device=tokens.device)
        allowed = ((same & causal) | eye)[:, None]
        x = self.tok(tokens) + self.pos(positions)
        for block in self.blocks:
            x = block(x, allowed)
        return self.head(self.ln(x))


def load_vocab(output: str) -> lm.VocabSpec:
    if storage.exists(storage.join(output, lm.VOCAB_NAME)):
        return lm.read_vocab(output)
    return lm.build_vocab(dataset.read_index(output)["streams"])


def batches(output: str, config: lm.SequenceConfig, vocab: lm.VocabSpec, context_len: int, batch_size: int,
            workers: int = 0):
    """Endless batches of packed rows (the dataset is read again when it runs out)."""
    rows = reader.lm_dataset(output, config, context_len, vocab=vocab)
    loader = torch.utils.data.DataLoader(rows, batch_size=batch_size, num_workers=workers, drop_last=False)
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError(f"{output} yields no rows for streams {config.streams}")


def train(output: str, streams: Sequence[str], steps: int = 20, context_len: int = 128, batch_size: int = 8,
          pattern: str = lm.INTERLEAVE, fixed_batch: bool = True, lr: float = 3e-3, dim: int = 32, layers: int = 2,
          heads: int = 2, workers: int = 0, seed: int = 0, threads: int = 1) -> list[float]:
    """Trains a TinyGPT for ``steps`` steps; returns the loss of each step (nats per token).

    ``threads``: torch intra-op threads while training (restored after). A model this small
    gains nothing from more, and on a busy machine spinning threads make it many times slower.
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _train(output, streams, steps, context_len, batch_size, pattern, fixed_batch, lr, dim, layers, heads,
                      workers, seed)
    finally:
        torch.set_num_threads(previous_threads)


def _train(output, streams, steps, context_len, batch_size, pattern, fixed_batch, lr, dim, layers, heads, workers,
           seed) -> list[float]:
    torch.manual_seed(seed)
    vocab = load_vocab(output)
    config = lm.SequenceConfig(tuple(streams), pattern=pattern)
    model = TinyGPT(vocab.size, context_len, dim=dim, layers=layers, heads=heads)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    source = batches(output, config, vocab, context_len, batch_size, workers)
    if fixed_batch:
        source = itertools.repeat(next(source))
    logger.info("vocab %d ids, %d parameters, context %d, batch %d", vocab.size,
                sum(p.numel() for p in model.parameters()), context_len, batch_size)
    losses = []
    for step, batch in zip(range(steps), source):
        logits = model(batch["tokens"], batch["positions"], batch["document_ids"])
        loss = F.cross_entropy(logits.reshape(-1, vocab.size), batch["targets"].reshape(-1), ignore_index=-100)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        logger.info("step %3d  loss %.4f", step, losses[-1])
    return losses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", help="an audiotok dataset folder")
    parser.add_argument("--streams", required=True, help="comma-separated discrete streams, in document order")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--context-len", dest="context_len", type=int, default=128)
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=8)
    parser.add_argument("--pattern", default=lm.INTERLEAVE, choices=lm.PATTERNS)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (with --stream-batches)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the model is tiny)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--fixed-batch", dest="fixed_batch", action="store_true", default=True,
                       help="train on one batch over and over (default)")
    group.add_argument("--stream-batches", dest="fixed_batch", action="store_false", help="a new batch every step")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    losses = train(args.output, [s for s in args.streams.split(",") if s], steps=args.steps,
                   context_len=args.context_len, batch_size=args.batch_size, pattern=args.pattern,
                   fixed_batch=args.fixed_batch, lr=args.lr, workers=args.workers, seed=args.seed,
                   threads=args.threads)
    if not all(math.isfinite(x) for x in losses):
        print(f"non-finite loss: {losses}", file=sys.stderr)
        return 1
    print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f} over {len(losses)} steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
