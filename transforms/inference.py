"""Running tokenizers under Beam's ``RunInference``: where the model lives, how workers share
it, and which errors a batch may survive.

* **Devices.** ``resolve_device`` turns ``auto`` into ``cuda`` or ``cpu``; ``assign_device``
  places the n-th model copy of a machine on GPU ``n mod #GPUs``; ``next_ordinal`` hands out
  that n across every SDK process of the machine.
* **The model.** ``LoadedTokenizers`` holds the tokenizers of one spec loaded on one device
  and encodes one tokenizer's batch at a time under ``torch.inference_mode`` (and bf16/fp16
  autocast for tokenizers that declare it safe). Its methods take and return numpy arrays
  only, so a ``MultiProcessShared`` proxy in another process calls it exactly as the process
  that holds it does.
* **Sharing.** ``TokenizerModelHandler`` is the ``ModelHandler`` RunInference drives: on CUDA
  one copy per GPU shared by all SDK processes of the worker (``MultiProcessShared``), on
  CPU one per process; ``model_copies`` overrides either way.
* **Faults.** ``is_out_of_memory`` (the batch may be split and retried) and
  ``is_accelerator_error`` (any other CUDA failure: the process's CUDA context may be
  poisoned, so the bundle must fail and be retried elsewhere, never be dead-lettered).

torch is imported where it is used: building a pipeline does not need it.
"""

from __future__ import annotations

import gc
import logging
import re
import sys
import tempfile
import threading
from typing import Any, Callable, Sequence

import numpy as np

from audiotok.transforms import metrics
from audiotok.transforms.tokenizers import registry
from audiotok.transforms.tokenizers.base import Tokenizer

logger = logging.getLogger(__name__)

AUTOCAST_CHOICES = ("none", "bf16", "fp16")
_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")
# Batches one model runs at once: on a GPU a second caller pads its batch and queues its
# copy while the first one's kernels run; on a CPU the model already uses every core.
CUDA_CONCURRENT_BATCHES = 2


def check_device(device: str) -> str:
    """Returns ``device`` when it is one we can place a model on; ValueError otherwise."""
    if not _DEVICE.match(device):
        raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps. Found: {device!r}")
    return device


# ---------------------------------------------------------------------------- devices


def cuda_device_count() -> int:
    """CUDA devices this process sees (0 without torch or without a GPU)."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; anything else unchanged."""
    if device != "auto":
        return device
    return "cuda" if cuda_device_count() else "cpu"


def assign_device(device: str, ordinal: int, device_count: int) -> str:
    """The device of a machine's ``ordinal``-th model copy (0-based).

    ``auto`` and ``cuda`` go round-robin over the ``device_count`` GPUs; ``auto`` without a
    GPU is the CPU; an explicit ``cpu``, ``cuda:N`` or ``mps`` is kept.

    Raises:
        RuntimeError: ``cuda`` was asked for and no GPU is visible.
    """
    check_device(device)
    if device not in ("auto", "cuda"):
        return device
    if device_count <= 0:
        if device == "cuda":
            raise RuntimeError("device 'cuda' was asked for, but this worker sees no CUDA device")
        return "cpu"
    return f"cuda:{ordinal % device_count}"


class _Ordinals:
    """0, 1, 2, ...: lives in one process of the machine, the others reach it by proxy."""

    def __init__(self) -> None:
        self._next = 0
        self._lock = threading.Lock()

    def take(self) -> int:
        with self._lock:
            n, self._next = self._next, self._next + 1
            return n


def next_ordinal(tag: str, path: str | None = None) -> int:
    """The next number of a counter shared by every process of this machine that uses ``tag``.

    The counter lives in whichever process asks first (``MultiProcessShared``); its address
    file stays under ``path`` (the temp dir by default), so tags must be unique per job.
    """
    from apache_beam.utils import multi_process_shared

    shared = multi_process_shared.MultiProcessShared(_Ordinals, tag=tag, path=path or tempfile.gettempdir(),
                                                     always_proxy=True)
    return shared.acquire().take()


# ---------------------------------------------------------------------------- loading once per process

_LOCK = threading.Lock()
_LOADED: dict[tuple[str, str], list[Tokenizer]] = {}
_loads = 0  # tokenizer sets loaded by this process
_unreported = 0  # of which not yet counted in the ``model_loads`` metric


def cpu_threads(torch_threads: int | None) -> int:
    """Torch intra-op threads for CPU inference: ``torch_threads``, or 1 when it is None.

    One by default because a CPU worker already runs one SDK process per core (Dataflow), or
    decodes in child processes beside the model (the direct runner): on a 2-core machine
    torch's default of one thread per core spun in OpenMP's barriers and ran log-mel and
    EnCodec 5-10x slower (``benchmarks/README.md``).
    """
    if torch_threads is not None and torch_threads < 1:
        raise ValueError(f"torch_threads must be >= 1. Found: {torch_threads}")
    return 1 if torch_threads is None else torch_threads


def set_cpu_threads(device: str, torch_threads: int | None) -> None:
    """Sets this process's torch thread count for inference on ``device`` (CPU only: on a GPU
    torch's threads only feed the device, and the default is left alone)."""
    if device != "cpu" and torch_threads is None:
        return
    import torch

    wanted = cpu_threads(torch_threads)
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)
        logger.info("torch intra-op threads: %d", wanted)


def loaded_tokenizers(specs: str, device: str, torch_threads: int | None = None) -> list[Tokenizer]:
    """The tokenizers of ``specs`` on ``device``, loaded once per process and shared by its threads.

    Loading also sets the process's torch threads (:func:`set_cpu_threads`).
    """
    global _loads, _unreported
    key = (specs, resolve_device(device))
    with _LOCK:
        set_cpu_threads(key[1], torch_threads)
        if key not in _LOADED:
            tokenizers = registry.create_all(specs)
            for tok in tokenizers:
                tok.load(key[1])
            _LOADED[key] = tokenizers
            _loads += 1
            _unreported += 1
            logger.info("loaded tokenizers %s on %s", specs, key[1])
        return _LOADED[key]


def load_count() -> int:
    """Tokenizer sets this process has loaded so far."""
    return _loads


def report_loads() -> None:
    """Adds this process's loads not yet counted to the ``model_loads`` metric.

    Models load in ``DoFn.setup``, where Beam has no metrics container; a DoFn calls this
    while it processes a bundle instead.
    """
    global _unreported
    if not _unreported:
        return
    with _LOCK:
        n, _unreported = _unreported, 0
    metrics.counter("model_loads").inc(n)


# ---------------------------------------------------------------------------- faults


class AcceleratorError(RuntimeError):
    """A CUDA failure other than running out of memory, while encoding a batch.

    It is re-raised so that the bundle fails and the runner retries it (on Dataflow, after a
    few failures, on another worker): dead-lettering the batch would hide a fault that
    every later batch of the process can hit.
    """


_OOM_MESSAGES = re.compile(r"out of memory|can't allocate memory|CUBLAS_STATUS_ALLOC_FAILED", re.IGNORECASE)
_CUDA_MESSAGES = re.compile(r"cuda|cudnn|cublas|cufft|curand|cusolver|cusparse|nccl|device-side assert",
                            re.IGNORECASE)


def _messages_count(error: BaseException) -> bool:
    # A proxy (MultiProcessShared) re-raises what it cannot unpickle as a RemoteError that only
    # carries the remote traceback's text.
    from multiprocessing.managers import RemoteError

    return isinstance(error, (RuntimeError, RemoteError))


def is_out_of_memory(error: BaseException) -> bool:
    """Host or device out-of-memory: the batch may fit once split."""
    if isinstance(error, MemoryError):
        return True
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(error, torch.OutOfMemoryError):  # = torch.cuda.OutOfMemoryError
        return True
    return _messages_count(error) and bool(_OOM_MESSAGES.search(str(error)))


def is_accelerator_error(error: BaseException) -> bool:
    """A CUDA error that is not an out-of-memory (``is_out_of_memory`` is checked first)."""
    if is_out_of_memory(error):
        return False
    torch = sys.modules.get("torch")
    if torch is not None:
        kinds = tuple(k for k in (getattr(torch, "AcceleratorError", None), getattr(torch.cuda, "CudaError", None),
                                  getattr(torch.cuda, "DeferredCudaCallError", None)) if k is not None)
        if kinds and isinstance(error, kinds):
            return True
    return _messages_count(error) and bool(_CUDA_MESSAGES.search(str(error)))


def release_cached_memory() -> None:
    """Returns the CUDA caching allocator's free blocks after an out-of-memory."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------- the shared model


def autocast_dtype(name: str):
    """``bf16`` / ``fp16`` -> the torch dtype; ``none`` -> None."""
    if name not in AUTOCAST_CHOICES:
        raise ValueError(f"autocast must be one of {', '.join(AUTOCAST_CHOICES)}. Found: {name!r}")
    if name == "none":
        return None
    import torch

    return torch.bfloat16 if name == "bf16" else torch.float16


class LoadedTokenizers:
    """The tokenizers of one spec, loaded on one device: the model ``RunInference`` shares.

    Thread-safe: at most ``CUDA_CONCURRENT_BATCHES`` batches run at once on a GPU, one on
    any other device.
    """

    def __init__(self, specs: str, device: str, autocast: str = "none", torch_threads: int | None = None):
        self._device = device
        self._tokenizers = loaded_tokenizers(specs, device, torch_threads)
        dtype = autocast_dtype(autocast)
        self._autocast = [dtype if dtype is not None and tok.autocast_safe else None for tok in self._tokenizers]
        if dtype is not None:
            skipped = [tok.name for tok, d in zip(self._tokenizers, self._autocast) if d is None]
            if skipped:
                logger.warning("autocast=%s is off for %s: reduced precision could change their tokens",
                               autocast, ", ".join(skipped))
        slots = CUDA_CONCURRENT_BATCHES if device.startswith("cuda") else 1
        self._slots = threading.BoundedSemaphore(slots)

    def device(self) -> str:
        return self._device

    def encode(self, index: int, audios: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """``tokenizers[index].encode_batch(audios)`` (float32 [samples] each, at its rate).

        Raises whatever the tokenizer raises; after an out-of-memory the allocator's cache
        is emptied first, here, in the process that holds the model.
        """
        import torch

        tok = self._tokenizers[index]
        dtype = self._autocast[index]
        with self._slots:
            try:
                with torch.inference_mode():
                    if dtype is None:
                        return tok.encode_batch(list(audios))
                    with torch.autocast(device_type=torch.device(self._device).type, dtype=dtype):
                        return tok.encode_batch(list(audios))
            except Exception as error:
                if is_out_of_memory(error):
                    release_cached_memory()
                raise


# Encodes one tokenizer's batch: (tokenizer index, audios) -> per audio, stream -> array.
EncodeFn = Callable[[int, Sequence[np.ndarray]], list[dict[str, np.ndarray]]]
# Turns segments into samples and failures given the tokenizers' metadata and an EncodeFn.
BatchFn = Callable[[Sequence[Tokenizer], Sequence[Any], EncodeFn], list[Any]]


def __getattr__(name: str):
    # RunInference's module imports torch and scipy (through apache_beam.ml): the handler
    # class is defined on first use, so that importing this module (and every CLI command
    # that reads TokenizeConfig) stays light. Pickling finds it here by name as usual.
    if name == "TokenizerModelHandler":
        with _LOCK:
            if name not in globals():
                globals()[name] = _define_handler()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _define_handler() -> type:
    from apache_beam.ml.inference.base import ModelHandler

    class TokenizerModelHandler(ModelHandler):
        """``ModelHandler[Segment, Sample | Failure, LoadedTokenizers]`` for ``RunInference``.

        Give it to RunInference as ``handler.with_no_batching()``: batches come pre-made (by
        length, bounded by seconds of audio) and ``run_inference`` runs ``batch_fn`` on one,
        which splits on out-of-memory and dead-letters segments one by one.

        Args:
            specs: the tokenizer specs.
            device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
            batch_fn: ``(tokenizers, segments, encode) -> samples and failures`` (a module-level
                function: the handler is pickled into the job).
            autocast: ``none``, ``bf16`` or ``fp16`` (only for tokenizers that declare it safe).
            model_copies: None: one copy per GPU shared by the worker's SDK processes on CUDA, one
                per process elsewhere; 0: one per process; N: N copies shared by the worker's
                processes, placed round-robin on its GPUs.
            tag: unique per job: names the machine-wide device counter.
            torch_threads: torch intra-op threads per process for CPU inference (None: 1,
                see :func:`cpu_threads`).
        """

        def __init__(self, specs: str, device: str, batch_fn: BatchFn, *, autocast: str = "none",
                     model_copies: int | None = None, tag: str = "audiotok", torch_threads: int | None = None):
            super().__init__()
            check_device(device)
            if autocast not in AUTOCAST_CHOICES:
                raise ValueError(f"autocast must be one of {', '.join(AUTOCAST_CHOICES)}. Found: {autocast!r}")
            if model_copies is not None and model_copies < 0:
                raise ValueError(f"model_copies must be >= 0 (0: one per process). Found: {model_copies}")
            self._specs = specs
            self._device = device
            self._batch_fn = batch_fn
            self._autocast = autocast
            self._copies = model_copies
            self._tag = tag
            self._threads = cpu_threads(torch_threads) if torch_threads is not None else None
            self._metadata: list[Tokenizer] | None = None

        def __getstate__(self) -> dict[str, Any]:
            state = dict(self.__dict__)
            state["_metadata"] = None  # rebuilt on the worker
            return state

        # -- what RunInference asks

        def share_model_across_processes(self) -> bool:
            return self._sharing()[0]

        def model_copies(self) -> int:
            return self._sharing()[1]

        def _sharing(self) -> tuple[bool, int]:
            if self._copies == 0:
                return False, 1
            if self._copies is not None:
                return True, self._copies
            device = resolve_device(self._device)
            if not device.startswith("cuda"):
                return False, 1
            return True, (cuda_device_count() or 1) if device == "cuda" else 1

        def load_model(self) -> LoadedTokenizers:
            return LoadedTokenizers(self._specs, self.next_device(), self._autocast, self._threads)

        def next_device(self) -> str:
            """The device of the next copy this machine loads (round-robin over its GPUs)."""
            count = cuda_device_count() if self._device in ("auto", "cuda") else 0
            ordinal = next_ordinal(f"audiotok-devices-{self._tag}") if count > 1 else 0
            return assign_device(self._device, ordinal, count)

        def run_inference(self, batch, model, inference_args=None):
            return self._batch_fn(self.tokenizers(), list(batch), model.encode)

        def tokenizers(self) -> list[Tokenizer]:
            """The tokenizers' metadata (rates, streams; no weights) in the process running batches."""
            if self._metadata is None:
                self._metadata = registry.create_all(self._specs)
            return self._metadata

        def get_num_bytes(self, batch) -> int:
            # The default pickles the whole batch to measure it.
            return int(sum(segment.audio.nbytes for segment in batch))

        def get_metrics_namespace(self) -> str:
            return metrics.NAMESPACE

    TokenizerModelHandler.__qualname__ = "TokenizerModelHandler"
    TokenizerModelHandler.__module__ = __name__
    return TokenizerModelHandler
