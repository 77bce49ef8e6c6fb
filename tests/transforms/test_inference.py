"""Model placement, sharing and faults: one load per process, devices round-robin,
out-of-memory split and dead-lettered, other CUDA errors fail the bundle, autocast where safe."""

from __future__ import annotations

import dataclasses
import glob
import os
import tempfile
import uuid
from multiprocessing.managers import RemoteError
from typing import ClassVar

import numpy as np
import pytest
import torch

from test_batching import RATE, SegmentRecipe, SignUnitsTokenizer, recipes, run_tokenize
from audiotok.transforms import failures, inference
from audiotok.transforms.failures import Failure
from audiotok.transforms.inference import AcceleratorError, LoadedTokenizers, TokenizerModelHandler
from audiotok.transforms.records import Sample
from audiotok.transforms.tokenize import TokenizeConfig, tokenize_batch
from audiotok.transforms.tokenizers import base, registry
from audiotok.transforms.tokenizers.base import TokenizerConfig

BAD = 12345  # samples of the segment that runs out of memory even alone
HAS_ACCELERATOR_ERROR = hasattr(torch, "AcceleratorError")  # recent torch releases only


@dataclasses.dataclass(frozen=True)
class FaultyConfig(TokenizerConfig):
    """Attributes:
        oom_above: batches of more segments raise torch.cuda.OutOfMemoryError (0: never).
        oom_samples: a batch holding a segment of this many samples does too, whatever its size.
        fault: ``cuda`` (RuntimeError naming CUDA), ``accelerator`` (torch.AcceleratorError) or
            ``value`` (ValueError), raised for batches holding a segment of ``fault_samples``
            samples (0: every batch).
    """

    oom_above: int = 0
    oom_samples: int = 0
    fault: str = ""
    fault_samples: int = 0


class FaultyTokenizer(SignUnitsTokenizer):
    """Sign units with injected faults. Records every call: batch lengths, inference mode,
    autocast dtype."""

    config_class = FaultyConfig
    calls: ClassVar[list[dict]] = []
    loads: ClassVar[int] = 0

    def load(self, device: str = "cpu"):
        if not self._loaded:
            FaultyTokenizer.loads += 1
        return super().load(device)

    def _encode_batch(self, audios):
        lengths = [len(a) for a in audios]
        FaultyTokenizer.calls.append({
            "tokenizer": self.name, "lengths": lengths, "inference_mode": torch.is_inference_mode_enabled(),
            "autocast": torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None})
        c = self.config
        if (c.oom_above and len(audios) > c.oom_above) or (c.oom_samples and c.oom_samples in lengths):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if c.fault and (not c.fault_samples or c.fault_samples in lengths):
            raise {"cuda": lambda: RuntimeError("CUDA error: an illegal memory access was encountered"),
                   "accelerator": lambda: torch.AcceleratorError("CUDA error: unspecified launch failure"),
                   "value": lambda: ValueError("bad input")}[c.fault]()
        return [{self.name: self.units(a)} for a in audios]


@registry.register("test-faulty")
class Faulty(FaultyTokenizer):
    name = "test-faulty"


@registry.register("test-faulty-amp")
class FaultyAmp(FaultyTokenizer):
    name = "test-faulty-amp"
    autocast_safe = True


@pytest.fixture(autouse=True)
def fresh_process_state(monkeypatch):
    """Every test starts as a fresh worker process would: nothing loaded, nothing recorded."""
    monkeypatch.setattr(inference, "_LOADED", {})
    monkeypatch.setattr(inference, "_unreported", 0)
    FaultyTokenizer.calls = []
    FaultyTokenizer.loads = 0


def segments(lengths):
    out = []
    for i, n in enumerate(lengths):
        seg = SegmentRecipe(i, n / RATE).segment()
        out.append(dataclasses.replace(seg, audio=seg.audio[:n]))
    return out


# ------------------------------------------------------------------------------ loading and devices


def test_one_model_load_per_process_however_many_elements():
    config = TokenizeConfig(specs="test-faulty", batch_max_s=2, batch_max_items=4, batch_buffer_s=4, device="cpu")
    before = inference.load_count()
    samples, fails, counters = run_tokenize(recipes([0.5 + (i % 7) / 4 for i in range(40)]), config)
    assert len(samples) == 40 and not fails
    assert len(FaultyTokenizer.calls) >= 10  # many batches...
    assert FaultyTokenizer.loads == 1 and inference.load_count() == before + 1  # ...one load
    assert counters["model_loads"] == 1
    # A second job in the same process reuses the loaded model.
    samples, _, counters = run_tokenize(recipes([1.0] * 12), config)
    assert len(samples) == 12 and FaultyTokenizer.loads == 1 and counters.get("model_loads", 0) == 0


def test_devices_round_robin(monkeypatch, tmp_path):
    assert inference.assign_device("auto", 5, 0) == "cpu"
    assert inference.assign_device("cpu", 5, 4) == "cpu"
    assert inference.assign_device("cuda:1", 5, 4) == "cuda:1"
    assert [inference.assign_device("cuda", n, 3) for n in range(4)] == ["cuda:0", "cuda:1", "cuda:2", "cuda:0"]
    with pytest.raises(RuntimeError, match="no CUDA device"):
        inference.assign_device("cuda", 0, 0)
    tag = f"audiotok-test-{uuid.uuid4().hex}"
    assert [inference.next_ordinal(tag, path=str(tmp_path)) for _ in range(3)] == [0, 1, 2]
    # A 3-GPU worker: each copy it loads goes to the next GPU.
    monkeypatch.setattr(inference, "cuda_device_count", lambda: 3)
    monkeypatch.setattr(inference.tempfile, "gettempdir", lambda: str(tmp_path))  # the counter's address file
    handler = TokenizerModelHandler("test-faulty", "auto", tokenize_batch, tag=uuid.uuid4().hex)
    assert [handler.next_device() for _ in range(4)] == ["cuda:0", "cuda:1", "cuda:2", "cuda:0"]


@pytest.mark.parametrize("gpus,device,copies,expected", [
    (0, "auto", None, (False, 1)),  # CPU: a model per SDK process
    (2, "cpu", None, (False, 1)),
    (2, "auto", None, (True, 2)),  # one per GPU, shared by the worker's processes
    (2, "cuda", None, (True, 2)),
    (2, "cuda:1", None, (True, 1)),
    (2, "auto", 0, (False, 1)),  # one per SDK process (one process, many threads; or MPS)
    (1, "auto", 3, (True, 3)),
])
def test_model_sharing(monkeypatch, gpus, device, copies, expected):
    monkeypatch.setattr(inference, "cuda_device_count", lambda: gpus)
    handler = TokenizerModelHandler("test-faulty", device, tokenize_batch, model_copies=copies)
    assert (handler.share_model_across_processes(), handler.model_copies()) == expected


# ------------------------------------------------------------------------------ faults


def test_errors_are_classified():
    oom = [torch.cuda.OutOfMemoryError("CUDA out of memory."), MemoryError(),
           RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes"),
           RemoteError("Traceback ...\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate")]
    cuda = [RuntimeError("CUDA error: an illegal memory access was encountered"),
            RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED")]
    if HAS_ACCELERATOR_ERROR:
        cuda.append(torch.AcceleratorError("CUDA error: unspecified launch failure"))
    other = [ValueError("bad input"), RuntimeError("kernel exploded"), KeyError("cuda")]
    assert all(inference.is_out_of_memory(e) and not inference.is_accelerator_error(e) for e in oom)
    assert all(inference.is_accelerator_error(e) and not inference.is_out_of_memory(e) for e in cuda)
    assert not any(inference.is_out_of_memory(e) or inference.is_accelerator_error(e) for e in other)


def test_out_of_memory_splits_the_batch_then_dead_letters_one_segment():
    tok = registry.create(f"test-faulty[oom_above=2,oom_samples={BAD}]")
    lengths = [16000, 8000, 4000, BAD, 16000, 9000, 3000, 5000]
    out = tokenize_batch([tok], segments(lengths))
    assert [type(o).__name__ for o in out] == ["Sample"] * 3 + ["Failure"] + ["Sample"] * 4
    assert out[3].reason == failures.OUT_OF_MEMORY and "out of memory" in out[3].message
    assert [len(c["lengths"]) for c in FaultyTokenizer.calls] == [8, 4, 2, 2, 1, 1, 4, 2, 2]
    assert [c["lengths"] for c in FaultyTokenizer.calls].count([BAD]) == 1  # tried alone once
    # What survived equals each segment encoded alone.
    plain = registry.create("test-faulty")
    for o, seg in zip(out, segments(lengths)):
        if isinstance(o, Sample):
            np.testing.assert_array_equal(o.streams["test-faulty"], plain.encode(seg.audio)["test-faulty"])


@pytest.mark.parametrize("fault", ["cuda", pytest.param("accelerator", marks=pytest.mark.skipif(
    not HAS_ACCELERATOR_ERROR, reason="this torch has no torch.AcceleratorError"))])
def test_other_cuda_errors_are_raised_not_dead_lettered(fault):
    tok = registry.create(f"test-faulty[fault={fault},fault_samples=8000]")
    with pytest.raises(AcceleratorError, match="CUDA error") as raised:
        tokenize_batch([tok], segments([16000, 8000, 4000]))
    assert inference.is_accelerator_error(raised.value.__cause__)
    assert len(FaultyTokenizer.calls) == 1  # no retry: the context may be poisoned


def test_other_errors_still_dead_letter_one_segment():
    tok = registry.create("test-faulty[fault=value,fault_samples=8000]")
    out = tokenize_batch([tok], segments([16000, 8000, 4000]))
    assert [o.reason if isinstance(o, Failure) else "ok" for o in out] == ["ok", failures.TOKENIZER_ERROR, "ok"]


def test_a_cuda_error_fails_the_bundle():
    config = TokenizeConfig(specs="test-faulty[fault=cuda,fault_samples=8000]", device="cpu")
    with pytest.raises(Exception, match="CUDA error"):
        run_tokenize([SegmentRecipe(0, 1.0), SegmentRecipe(1, 0.5), SegmentRecipe(2, 0.25)], config)


@pytest.fixture
def remove_shared_files():
    """RunInference's MultiProcessShared leaves an address and a lock file per tag in the temp dir."""
    pattern = os.path.join(tempfile.gettempdir(), "audiotok-*")
    before = set(glob.glob(pattern))
    yield
    for path in set(glob.glob(pattern)) - before:
        if path.endswith((".address", ".lock")):
            os.remove(path)


def test_shared_model_path_with_out_of_memory(remove_shared_files):
    """model_copies=1 takes the GPU path on the CPU: RunInference holds the model in a
    MultiProcessShared server and calls it by proxy; out-of-memory errors cross the proxy."""
    config = TokenizeConfig(specs=f"test-faulty[oom_above=2,oom_samples={BAD}]", device="cpu", model_copies=1,
                            batch_max_s=240, batch_max_items=8)  # batches of several: splits to make
    recipe = recipes([1.0, 0.5, 0.75, 1.0, 0.5, 0.25])
    samples, fails, counters = run_tokenize([*recipe, SegmentRecipe(99, BAD / RATE)], config)
    assert sorted(s.key for s in samples) == [r.segment().key for r in recipe]
    assert [(f.reason, f.uri) for f in fails] == [(failures.OUT_OF_MEMORY, "mem://file99.wav")]
    assert counters["oom_splits"] >= 2 and counters["model_loads"] == 1


# ------------------------------------------------------------------------------ precision and modes


def test_inference_mode_always_autocast_only_where_safe():
    model = LoadedTokenizers("test-faulty,test-faulty-amp", "cpu", autocast="bf16")
    audio = [np.zeros(1600, np.float32)]
    model.encode(0, audio)
    model.encode(1, audio)
    calls = {c["tokenizer"]: c for c in FaultyTokenizer.calls}
    assert calls["test-faulty"]["inference_mode"] and calls["test-faulty-amp"]["inference_mode"]
    assert calls["test-faulty"]["autocast"] is None  # discrete units: never under autocast
    assert calls["test-faulty-amp"]["autocast"] == torch.bfloat16
    FaultyTokenizer.calls = []
    LoadedTokenizers("test-faulty-amp", "cpu").encode(0, audio)
    assert FaultyTokenizer.calls[0]["autocast"] is None


def test_config_checks():
    for bad in [dict(autocast="fp32"), dict(device="gpu"), dict(model_copies=-1), dict(batch_buffer_s=0)]:
        with pytest.raises(ValueError):
            TokenizeConfig(**bad)
    assert TokenizeConfig(batch_max_s=30).batch_limits("cpu") == (30, 360)
    assert TokenizeConfig(batch_buffer_s=5).batch_limits("cuda:0") == (240, 5)


def test_default_batches_are_one_segment_on_cpu_and_240_s_on_a_gpu():
    defaults = TokenizeConfig()
    assert defaults.batch_limits("cpu") == (None, 0.0)  # nothing held back: decoding keeps going
    assert defaults.batch_limits("cuda:0") == (240.0, 12 * 240.0) == defaults.batch_limits("mps")


def test_to_device_on_cpu_shares_memory():
    array = np.arange(6, dtype=np.float32)
    tensor = base.to_device(array, "cpu")
    assert tensor.device.type == "cpu" and tensor.data_ptr() == array.ctypes.data


def test_cpu_inference_sets_torch_threads():
    """CPU workers default to one torch thread per process (two spun against each other on 2
    cores); --torch-threads overrides it and reaches the job's config."""
    import torch

    from audiotok.pipelines import options
    from audiotok.transforms import inference
    from audiotok.transforms.tokenize import TokenizeConfig

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        inference.loaded_tokenizers("logmel", "cpu")
        assert torch.get_num_threads() == 1
        inference.loaded_tokenizers("logmel", "cpu", torch_threads=2)
        assert torch.get_num_threads() == 2
        with pytest.raises(ValueError, match="torch_threads"):
            TokenizeConfig(torch_threads=0)
        args, _ = options.parse(options.TokenizeOptions, ["--input", "x", "--output", "y", "--torch-threads", "3"],
                                "audiotok tokenize")
        assert options.tokenize_config(args).torch_threads == 3
    finally:
        torch.set_num_threads(before)
