"""How fast each model tokenizer runs on this CPU, batched and one segment at a time.

    python -m benchmarks.tokenizers_cpu            # every tokenizer, 4 x 10 s segments
    python -m benchmarks.tokenizers_cpu --quick    # 2 x 4 s segments, a few minutes in all
    python -m benchmarks.tokenizers_cpu --only encodec-24k,hubert-l9-km500

Models are built at their real size with random weights (no download: the architectures'
configs are written out here), saved once under ``--models`` and loaded through the same
``model=FOLDER`` path users take. Speed does not depend on the weights' values. The
baseline is measured in the same run: each tokenizer encodes the same segments as one
padded ``encode_batch`` call (``chunking.BATCH_ON_CPU`` on; models that are not
padding-invariant batch equal lengths only) and then one ``encode`` per segment (the CPU
default).

Figures are seconds of audio per wall-clock second (x real time); higher is better.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np


def _hf_saver(config_name: str, model_name: str, **kwargs) -> Callable[[Path], None]:
    def save(folder: Path) -> None:
        import transformers

        config = getattr(transformers, config_name)(**kwargs)
        getattr(transformers, model_name)(config).eval().save_pretrained(str(folder))

    return save


def _snac_saver(**config) -> Callable[[Path], None]:
    def save(folder: Path) -> None:
        import snac
        from safetensors.torch import save_file

        model = snac.SNAC(**config).eval()
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(config))
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))

    return save


_SNAC_MUSIC = dict(encoder_dim=64, encoder_rates=[2, 3, 8, 8], decoder_dim=1536, decoder_rates=[8, 8, 3, 2],
                   attn_window_size=32, codebook_size=4096, codebook_dim=8, vq_strides=[8, 4, 2, 1], noise=True,
                   depthwise=True)

# The real architectures (the Hub checkpoints' config.json values that shape compute).
MODELS: dict[str, Callable[[Path], None]] = {
    "encodec-24k": _hf_saver("EncodecConfig", "EncodecModel"),
    "encodec-48k": _hf_saver("EncodecConfig", "EncodecModel", sampling_rate=48000, audio_channels=2, normalize=True,
                             chunk_length_s=1.0, overlap=0.01, norm_type="time_group_norm", use_causal_conv=False,
                             target_bandwidths=[3.0, 6.0, 12.0, 24.0]),
    "dac-16k": _hf_saver("DacConfig", "DacModel", downsampling_ratios=[2, 4, 5, 8], n_codebooks=12,
                         sampling_rate=16000),
    "dac-24k": _hf_saver("DacConfig", "DacModel", downsampling_ratios=[2, 4, 5, 8], n_codebooks=32,
                         sampling_rate=24000),
    "dac-44k": _hf_saver("DacConfig", "DacModel", downsampling_ratios=[2, 4, 8, 8], n_codebooks=9,
                         sampling_rate=44100),
    "mimi": _hf_saver("MimiConfig", "MimiModel"),
    "snac-24k": _snac_saver(sampling_rate=24000, encoder_dim=48, encoder_rates=[2, 4, 8, 8], decoder_dim=1024,
                            decoder_rates=[8, 8, 4, 2], attn_window_size=None, codebook_size=4096, codebook_dim=8,
                            vq_strides=[4, 2, 1], noise=True, depthwise=True),
    "snac-32k": _snac_saver(sampling_rate=32000, **_SNAC_MUSIC),
    "snac-44k": _snac_saver(sampling_rate=44100, **_SNAC_MUSIC),
    "hubert": _hf_saver("HubertConfig", "HubertModel"),
    "wavlm": _hf_saver("WavLMConfig", "WavLMModel"),
    "wav2vec2": _hf_saver("Wav2Vec2Config", "Wav2Vec2Model"),
}

# Tokenizer name -> the model folder it loads (the SSL names share one per architecture).
TOKENIZERS: dict[str, str] = {
    "encodec-24k": "encodec-24k", "encodec-48k": "encodec-48k", "dac-16k": "dac-16k", "dac-24k": "dac-24k",
    "dac-44k": "dac-44k", "mimi": "mimi", "snac-24k": "snac-24k", "snac-32k": "snac-32k", "snac-44k": "snac-44k",
    "hubert-l9-km500": "hubert", "hubert-emb": "hubert", "wavlm-kmeans": "wavlm", "wav2vec2-kmeans": "wav2vec2",
}
QUICK = ("encodec-24k", "encodec-48k", "dac-16k", "mimi", "snac-24k", "hubert-l9-km500", "hubert-emb")


def model_folder(root: Path, model: str) -> Path:
    folder = root / model
    if not (folder / "config.json").exists():
        print(f"  building {model} (random weights, real size) in {folder}", file=sys.stderr)
        MODELS[model](folder)
    return folder


def random_codebook(tok, root: Path) -> str:
    """A k-means codebook of random centroids bound to the tokenizer's features (speed only)."""
    from audiotok.transforms.tokenizers import kmeans

    path = root / f"{tok.name}-k{tok.config.k}.safetensors"
    rng = np.random.default_rng(0)
    book = kmeans.Codebook(rng.standard_normal((tok.config.k, tok.feature_dim)).astype(np.float32),
                           {"tokenizer": tok.name, "features": tok.feature_fingerprint()})
    path.write_bytes(book.to_bytes())
    return str(path)


def build(name: str, root: Path):
    from audiotok.transforms.tokenizers import registry
    from audiotok.transforms.tokenizers.spectral import KMeansTokenizer

    spec = f"{name}[model={model_folder(root, TOKENIZERS[name])}]"
    tok = registry.create(spec)
    if isinstance(tok, KMeansTokenizer):
        tok = registry.create(f"{spec[:-1]},codebook={random_codebook(tok, root)}]")
    return tok


def measure(tok, seconds: list[float], repeats: int) -> dict[str, float]:
    from audio_fixtures import synth_speechlike

    from audiotok.transforms.tokenizers import chunking

    audios = [synth_speechlike(s, tok.sample_rate, seed=i)[0] for i, s in enumerate(seconds)]
    total_s = sum(seconds)
    tok.encode_batch([a[: tok.sample_rate] for a in audios[:2]])  # warm-up: kernels for these shapes
    tok.encode(audios[0])
    batched, single = [], []
    for _ in range(repeats):
        chunking.BATCH_ON_CPU = True  # padded batches (the CPU default is one segment per pass)
        try:
            t = time.perf_counter()
            tok.encode_batch(audios)
            batched.append(time.perf_counter() - t)
        finally:
            chunking.BATCH_ON_CPU = False
        t = time.perf_counter()
        for a in audios:
            tok.encode(a)
        single.append(time.perf_counter() - t)
    return {"batched_x": total_s / min(batched), "single_x": total_s / min(single)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tokenizers_cpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 x 4 s segments, fewer tokenizers")
    parser.add_argument("--only", default="", help="comma-separated tokenizer names")
    parser.add_argument("--models", default=os.path.join(os.path.expanduser("~"), ".cache", "audiotok", "bench-models"),
                        help="where the random real-size models are saved (reused across runs)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own)")
    parser.add_argument("--repeats", type=int, default=0, help="timed repeats (best kept; default 1 quick, 2 full)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # audio_fixtures

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n for n in args.only.split(",") if n] or list(QUICK if args.quick else TOKENIZERS)
    unknown = sorted(set(names) - set(TOKENIZERS))
    if unknown:
        parser.error(f"unknown tokenizer(s) {', '.join(unknown)}; known: {', '.join(TOKENIZERS)}")
    seconds = [4.0, 4.0] if args.quick else [10.0, 10.0, 10.0, 10.0]
    repeats = args.repeats or (1 if args.quick else 2)
    root = Path(args.models)
    root.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    print(f"{len(seconds)} x {seconds[0]:g} s segments, {torch.get_num_threads()} torch threads, "
          f"{os.cpu_count()} cores, load average {load:.1f} at start", file=sys.stderr)
    rows = []
    for name in names:
        tok = build(name, root)
        t = time.perf_counter()
        tok.load("cpu")
        load_s = time.perf_counter() - t
        params = sum(p.numel() for p in _module(tok).parameters()) / 1e6
        figures = measure(tok, seconds, repeats)
        rows.append({"tokenizer": name, "params_m": params, "load_s": load_s,
                     "padding_invariant": tok.padding_invariant, **figures})
        print(f"  {name}: batched {figures['batched_x']:.1f}x, one at a time {figures['single_x']:.1f}x",
              file=sys.stderr)
        del tok
    print(table(rows, seconds))
    return 0


def _module(tok):
    return tok.backbone._model if hasattr(tok, "backbone") else tok._model


def table(rows: list[dict], seconds: list[float]) -> str:
    lines = [f"| tokenizer | params loaded (M) | padding-invariant | batched ({len(seconds)} x {seconds[0]:g} s) "
             "| one at a time | batched / one |",
             "|---|---:|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['tokenizer']} | {r['params_m']:.1f} | {'yes' if r['padding_invariant'] else 'no'} "
                     f"| {r['batched_x']:.1f}x | {r['single_x']:.1f}x | {r['batched_x'] / r['single_x']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
