"""The decode route behind a process boundary: a native crash or a hang costs one file (or one
stretch of a long file), not the worker.

``make_decoder(config)`` returns what the decode stage's DoFns call:

* ``InProcessDecoder`` (``isolation="none"``) runs the route (``config.decoder``, a
  :class:`audiotok.transforms.decode.FileDecoder`) in the worker; the time limit is checked
  between decoded blocks, a crash takes the worker down.
* ``ProcessDecoder`` (``isolation="process"``, the default) keeps one child process per DoFn
  instance (so one per decoding thread), reused request after request. Every request that
  parses the bytes of an input runs in the child: opening a file (its header probe, then its
  whole decode or a long file's plan) and decoding a stretch of a long file. When the child
  dies (SIGSEGV, abort, OOM kill) the request becomes a ``decoder_crash`` record; when it does
  not answer within ``timeout_s`` (plus a grace period) it is killed and the request becomes a
  ``timeout`` record. Either way the next request starts a fresh child.

A request can be left in flight (:meth:`ProcessDecoder.submit`, then :meth:`ProcessDecoder.collect`):
the decode step keeps ``DecodeConfig.decoder_processes`` inputs in flight per thread, so the
children decode while the worker runs the fused steps after decoding (segmenting, tokenizing,
writing) on what came back before.

The protocol: the parent sends one JSON request (``{"op": "open", "uri": ..., "split": ...}`` or
``{"op": "stretch", ...}``); the child answers with JSON headers, each followed, when it says
``samples``, by that many raw float32 values: ``whole`` (a decoded file), ``plan`` (a long
file's plan), ``chunk`` ... ``end`` (a stretch), or an error with its reason. Nothing the child
sends is unpickled: it is JSON, checked field by field, plus raw float32 bytes of a size
checked against the limits, so even a decoder compromised by a hostile file cannot make the
parent run code. The samples cross the pipe (one copy into a fresh array on each side): a
shared-memory file mapped by the parent was measured to cost the parent more CPU (page faults on
first touch, ~36 ms per 100 MB of samples) than the copy out of the pipe (~26 ms), and the
parent's CPU is what a worker runs short of. Children start from a ``forkserver`` that has imported the decoding modules
once (not Beam: ~0.3 s), so a restart costs milliseconds (``spawn`` works too, at ~0.5 s a start).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import multiprocessing
import os
import resource
import signal
import threading
import time
import traceback
from multiprocessing import spawn as mp_spawn
from typing import Any, Iterator

import numpy as np

from audiotok.transforms import failures
from audiotok.transforms.decode import (DEFAULT_CHUNK_S, DecodeConfig, FileDecoder, Plan, SplitConfig, WorkItem,
                                        resolve_decoder)
from audiotok.transforms.failures import AudiotokError
from audiotok.transforms.policy import Repair
from audiotok.transforms.readers import Probe
from audiotok.transforms.records import AudioRef, Decoded

logger = logging.getLogger(__name__)

# Extra wait beyond timeout_s before the child is killed: the child's own deadline (checked
# between chunks) answers first with a clean ``timeout`` when it can.
GRACE_S = 2.0
# A fresh child must say it is ready within this (imports included).
STARTUP_TIMEOUT_S = 120.0
_MAX_HEADER_BYTES = 1 << 20
# A plan never has more items than this (a 4-hour limit at the smallest split is 720).
_MAX_CUTS = 1 << 16
# Not "__main__": the forkserver would run the parent's main script again (a script without an
# ``if __name__ == "__main__"`` guard would start the job inside it; one read from stdin cannot
# be found). A custom ``DecodeConfig.decoder`` must live in an importable module.
_PRELOAD = ["audiotok.transforms.isolation", "audiotok.transforms.decode"]
_forkserver_lock = threading.Lock()

# What opening an input gives: a short file decoded whole (with its notes), or a long file's plan.
Opened = tuple[Decoded, tuple[str, ...]] | Plan


@contextlib.contextmanager
def _without_parent_main():
    """Children start without re-importing the parent's ``__main__``.

    multiprocessing's forkserver and spawn children import the parent's main module (as
    ``__mp_main__``) before they run their target, for targets defined there. The decoder's
    target and arguments live in audiotok's modules, and the parent's main can be a script
    with no guard, stdin or a notebook. Callers hold ``_forkserver_lock``.
    """
    original = mp_spawn.get_preparation_data

    def preparation_data(name: str) -> dict[str, Any]:
        data = original(name)
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
        return data

    mp_spawn.get_preparation_data = preparation_data
    try:
        yield
    finally:
        mp_spawn.get_preparation_data = original


class InProcessDecoder:
    """Runs the route in this process (no protection from native crashes or hangs).

    Args:
        config: the decode configuration.
        split: how long files are planned (None: every file is decoded whole).
    """

    def __init__(self, config: DecodeConfig, split: SplitConfig | None = None):
        self.config, self.split = config, split
        self._route: FileDecoder = resolve_decoder(config.decoder)()
        self._pending: AudioRef | None = None

    def open(self, ref: AudioRef) -> Opened:
        """A short file decoded whole ``(Decoded, notes)``, or a long one's :class:`Plan`."""
        return self._route.open(ref, self.config, self.split)

    def decode(self, ref: AudioRef) -> tuple[Decoded, tuple[str, ...]]:
        """``ref`` decoded whole, whatever its length."""
        return self._route.open(ref, self.config, None)

    @property
    def busy(self) -> bool:
        return self._pending is not None

    def submit(self, ref: AudioRef) -> None:
        """Takes ``ref`` for :meth:`collect`, which opens it (in-process, nothing runs alongside)."""
        if self._pending is not None:
            raise RuntimeError("collect() the answer to the request in flight first")
        self._pending = ref

    def collect(self) -> Opened:
        ref, self._pending = self._pending, None
        if ref is None:
            raise RuntimeError("no request in flight")
        return self.open(ref)

    def stretch(self, item: WorkItem, chunk_s: float = DEFAULT_CHUNK_S) -> Iterator[np.ndarray]:
        """The stretch of ``item``: mono float32 chunks at the source rate."""
        return self._route.stretch(item, self.config, chunk_s)

    def close(self) -> None:
        pass


class ProcessDecoder:
    """Runs the route in one reused child process, restarted after a crash or a timeout.

    Args:
        config: the decode configuration (the child gets a copy at start).
        split: how long files are planned (None: every file is decoded whole).
        start_method: ``forkserver`` (default; fast restarts) or ``spawn``.

    Not thread-safe: one instance per thread (Beam gives each thread its own DoFn). One
    request at a time: a stretch's chunks are read to the end (or the generator closed,
    which restarts the child) before the next request.
    """

    def __init__(self, config: DecodeConfig, split: SplitConfig | None = None, start_method: str = "forkserver"):
        if start_method not in ("forkserver", "spawn"):
            raise ValueError(f"start_method must be forkserver or spawn. Found: {start_method!r}")
        if start_method not in multiprocessing.get_all_start_methods():  # Windows: spawn only
            start_method = "spawn"
        self.config, self.split = config, split
        self.start_method = start_method
        self.restarts = 0
        self.max_rss_mb = 0.0  # the largest peak resident memory a decoder process reported
        self._process = None
        self._conn = None
        self._pending: tuple[AudioRef, float] | None = None

    @property
    def pid(self) -> int | None:
        """The decoder process's id (None before the first request or after a crash)."""
        return self._process.pid if self._process is not None else None

    # -- lifecycle

    def _start(self) -> None:
        ctx = multiprocessing.get_context(self.start_method)
        parent, child = ctx.Pipe(duplex=True)
        # The forkserver's environment dates from its start; storage endpoints and credentials
        # come from the environment (audiotok.transforms.storage), so the child gets this process's.
        process = ctx.Process(target=serve, args=(child, self.config, dict(os.environ)), name="audiotok-decoder",
                              daemon=True)
        with _forkserver_lock, _without_parent_main():
            if self.start_method == "forkserver":
                ctx.set_forkserver_preload(_PRELOAD)
            process.start()
        child.close()
        self._process, self._conn = process, parent
        if not parent.poll(STARTUP_TIMEOUT_S):
            self._stop(kill=True)
            raise RuntimeError(f"the decoder process did not start within {STARTUP_TIMEOUT_S:.0f} s")
        try:
            ready = json.loads(parent.recv_bytes(_MAX_HEADER_BYTES))
        except (EOFError, OSError, ValueError) as e:
            code = self._stop(kill=True)
            raise RuntimeError(f"the decoder process failed to start ({_exit_description(code)}): {e}") from None
        if not ready.get("ready"):
            self._stop(kill=True)
            raise RuntimeError(f"the decoder process failed to start: {ready.get('error', ready)}")

    def _ready(self):
        """The pipe to a live child (started now if needed)."""
        if self._process is None or not self._process.is_alive():
            if self._process is not None:
                self._stop(kill=True)
            self._start()
        return self._conn

    def _stop(self, kill: bool) -> int | None:
        """Ends the child; returns its exit code."""
        process, conn = self._process, self._conn
        self._process = self._conn = None
        self._pending = None
        if conn is not None:
            conn.close()  # the child's recv sees EOF and returns
        if process is None:
            return None
        if kill and process.is_alive():
            process.kill()
        process.join(5.0)
        if process.is_alive():
            process.kill()
            process.join(5.0)
        code = process.exitcode
        if not process.is_alive():
            process.close()
        return code

    def close(self) -> None:
        """Stops the child (it exits when its pipe closes)."""
        self._stop(kill=False)

    def __del__(self) -> None:
        try:
            self._stop(kill=True)
        except Exception:  # interpreter shutdown: nothing left to tidy
            pass

    @contextlib.contextmanager
    def _guarded(self, uri: str):
        """Turns a child that died or hung during a request into a ``decoder_crash`` / ``timeout``."""
        try:
            yield
        except _ChildTimeout:
            self._stop(kill=True)
            self.restarts += 1
            timeout = self.config.timeout_s
            raise AudiotokError(failures.TIMEOUT, f"no answer within {timeout:g} s (+{GRACE_S:g} s grace); the decoder "
                                "process was killed and restarted", uri) from None
        except (EOFError, OSError, _ProtocolError) as e:
            code = self._stop(kill=True)
            self.restarts += 1
            detail = f": {e}" if isinstance(e, _ProtocolError) else ""
            raise AudiotokError(failures.DECODER_CRASH, f"the decoder process died ({_exit_description(code)})"
                                f"{detail}; restarted", uri) from None

    # -- requests

    def open(self, ref: AudioRef) -> Opened:
        """A short file decoded whole ``(Decoded, notes)``, or a long one's :class:`Plan`, in the child.

        Raises:
            AudiotokError: what the decoder raised, or ``timeout`` / ``decoder_crash``.
        """
        self.submit(ref)
        return self.collect()

    def decode(self, ref: AudioRef) -> tuple[Decoded, tuple[str, ...]]:
        """``ref`` decoded whole in the child, whatever its length."""
        self.submit(ref, whole=True)
        return self.collect()

    @property
    def busy(self) -> bool:
        """Whether a request was submitted and its answer not yet collected."""
        return self._pending is not None

    def submit(self, ref: AudioRef, whole: bool = False) -> None:
        """Sends ``ref`` to the child and returns at once: the child opens it while the caller
        works on something else; :meth:`collect` gets the answer. One request at a time.

        Raises:
            AudiotokError: ``decoder_crash`` when the request cannot be sent.
        """
        if self._pending is not None:
            raise RuntimeError("collect() the answer to the request in flight first")
        conn = self._ready()
        split = None if whole or self.split is None else dataclasses.asdict(self.split)
        with self._guarded(ref.uri):
            conn.send_bytes(_encode({"op": "open", "uri": ref.uri, "split": split}))
        self._pending = (ref, time.monotonic())

    def collect(self) -> Opened:
        """The answer to the submitted request; ``timeout_s`` (plus the grace period) counts
        from the submission.

        Raises:
            AudiotokError: what the decoder raised, or ``timeout`` / ``decoder_crash``.
        """
        if self._pending is None:
            raise RuntimeError("no request in flight")
        (ref, submitted), self._pending = self._pending, None
        conn = self._conn
        timeout = self.config.timeout_s
        left = None if timeout is None else max(0.0, submitted + timeout + GRACE_S - time.monotonic())
        with self._guarded(ref.uri):
            header = self._receive_header(conn, left, ref.uri)
            if header.get("kind") == "plan":
                return _parse_plan(header, self.config)
            if header.get("kind") != "whole":
                raise _ProtocolError("an answer of an unknown kind")
            _check_whole(header, self.config)
            samples = self._receive_samples(conn, header["samples"])
        decoded = Decoded(source=ref, audio=samples, sample_rate=header["sample_rate"],
                          source_sample_rate=header["source_sample_rate"],
                          source_channels=header["source_channels"], source_format=header["source_format"])
        return decoded, tuple(header["notes"])

    def stretch(self, item: WorkItem, chunk_s: float = DEFAULT_CHUNK_S) -> Iterator[np.ndarray]:
        """The stretch of ``item`` decoded in the child: mono float32 chunks at the source rate.

        ``timeout_s`` (plus the grace period) bounds the time spent waiting for the child over
        the whole stretch, not the time the caller holds the chunks.

        Raises:
            AudiotokError: what the decoder raised, or ``timeout`` / ``decoder_crash``.
        """
        if self._pending is not None:
            raise RuntimeError("collect() the answer to the request in flight first")
        conn = self._ready()
        uri = item.source.uri
        timeout = self.config.timeout_s
        left = None if timeout is None else timeout + GRACE_S
        per_chunk = max(1024, int(chunk_s * item.sample_rate))
        total_limit = (item.stop - item.start) if item.stop is not None else self.config.max_duration_frames(
            item.sample_rate)
        done = False
        try:
            with self._guarded(uri):
                conn.send_bytes(_encode({"op": "stretch", "item": _item_json(item), "chunk_s": chunk_s}))
            total = 0
            while True:
                with self._guarded(uri):
                    waited = time.monotonic()
                    try:
                        header = self._receive_header(conn, left, uri)
                    except AudiotokError:
                        done = True  # the child answered with the reason and waits for the next request
                        raise
                    if left is not None:
                        left -= time.monotonic() - waited
                    kind = header.get("kind")
                    if kind == "end":
                        done = True
                        _check_rss(header)
                        self.max_rss_mb = max(self.max_rss_mb, header["max_rss_mb"])
                        return
                    n = header.get("samples")
                    if kind != "chunk" or type(n) is not int or not 0 < n <= min(per_chunk, total_limit - total):
                        raise _ProtocolError(f"a malformed chunk ({n!r} samples)")
                    chunk = self._receive_samples(conn, n)
                total += n
                yield chunk
        finally:
            if not done and self._conn is conn:  # abandoned mid-stretch: the child is still writing
                self._stop(kill=True)

    # -- the wire

    def _receive_header(self, conn, timeout: float | None, uri: str) -> dict[str, Any]:
        """The next JSON header; an error answer is raised as its ``AudiotokError``."""
        if not conn.poll(timeout):
            raise _ChildTimeout()
        try:
            header = json.loads(conn.recv_bytes(_MAX_HEADER_BYTES))
        except ValueError:
            raise _ProtocolError("an unreadable answer") from None
        if not isinstance(header, dict):
            raise _ProtocolError("an unreadable answer")
        if not header.get("ok"):
            reason = header.get("reason")
            reason = reason if reason in failures.REASONS else failures.DECODE_ERROR
            if header.get("unexpected"):
                logger.warning("decoder bug on %s: %s", failures.redact(failures.printable(uri)),
                               failures.redact(str(header.get("traceback", ""))))
            raise AudiotokError(reason, str(header.get("message", "")), uri, transient=header.get("transient") is True)
        if header.get("kind") in ("whole", "plan"):
            _check_rss(header)
            self.max_rss_mb = max(self.max_rss_mb, header["max_rss_mb"])
        return header

    def _receive_samples(self, conn, count: int) -> np.ndarray:
        """Reads exactly ``count`` float32 values straight into a fresh array (one copy, no pickle)."""
        samples = np.empty(count, np.float32)
        view = memoryview(samples).cast("B")
        fd = conn.fileno()
        pos, deadline = 0, time.monotonic() + (self.config.timeout_s or STARTUP_TIMEOUT_S) + GRACE_S
        while pos < len(view):
            if not conn.poll(max(0.0, deadline - time.monotonic())):
                raise _ChildTimeout()
            n = os.readv(fd, [view[pos:]])
            if n == 0:
                raise EOFError("the decoder process closed the pipe mid-answer")
            pos += n
        return samples


class _ChildTimeout(Exception):
    pass


class _ProtocolError(Exception):
    pass


def _encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, ensure_ascii=True).encode("ascii")


def _item_json(item: WorkItem) -> dict[str, Any]:
    return {"uri": item.source.uri, "info": item.info.to_json(), "start": item.start, "stop": item.stop,
            "repair": item.repair.to_json(), "frames": item.frames}


def _item_from_json(value: dict[str, Any]) -> WorkItem:
    """The child's side: a request from the parent (trusted, still parsed strictly)."""
    return WorkItem(AudioRef(value["uri"]), Probe.from_json(value["info"]),
                    int(value["start"]), None if value["stop"] is None else int(value["stop"]), 0, 1,
                    Repair.from_json(value["repair"]), None if value["frames"] is None else int(value["frames"]))


def _check_rss(header: dict[str, Any]) -> None:
    if type(header.get("max_rss_mb")) not in (int, float):
        raise _ProtocolError("a malformed header")


def _check_notes(notes: Any) -> None:
    if not isinstance(notes, list) or not all(isinstance(n, str) and n.isidentifier() for n in notes):
        raise _ProtocolError("malformed notes")


def _check_whole(header: dict[str, Any], config: DecodeConfig) -> None:
    """A whole-file answer must describe an array the limits allow; anything else is a protocol error."""
    ints = ("samples", "sample_rate", "source_sample_rate", "source_channels")
    if not all(type(header.get(k)) is int for k in ints):
        raise _ProtocolError("a malformed header")
    if header["sample_rate"] <= 0 or header["source_sample_rate"] <= 0 or header["source_channels"] <= 0:
        raise _ProtocolError("a malformed header")
    limit = config.max_frames(header["sample_rate"], 1)
    if not 0 <= header["samples"] <= limit:
        raise _ProtocolError(f"{header['samples']} samples, beyond the limits ({limit})")
    if not isinstance(header.get("source_format"), str):
        raise _ProtocolError("a malformed header")
    _check_rss(header)
    _check_notes(header.get("notes"))


def _parse_plan(header: dict[str, Any], config: DecodeConfig) -> Plan:
    """A plan answer, checked field by field."""
    try:
        probe = Probe.from_json(header.get("probe"))
        repair = Repair.from_json(header.get("repair"))
    except ValueError as e:
        raise _ProtocolError(str(e)) from None
    cuts, frames = header.get("cuts"), header.get("frames")
    if (not isinstance(cuts, list) or len(cuts) > _MAX_CUTS or not all(type(c) is int and c > 0 for c in cuts)
            or any(b <= a for a, b in zip(cuts, cuts[1:]))):
        raise _ProtocolError("malformed plan cuts")
    if frames is not None and not (type(frames) is int and 0 < frames < 1 << 62):
        raise _ProtocolError("a malformed plan length")
    _check_notes(header.get("notes"))
    return Plan(probe, tuple(cuts), repair, tuple(header["notes"]), frames)


def _exit_description(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


# ------------------------------------------------------------------ the child


def peak_rss_mb() -> float:
    """The peak resident memory of this process, MB: ``VmHWM`` where Linux gives it. Not
    ``ru_maxrss`` there: a process started by vfork + exec (``subprocess``, ``spawn``) inherits in
    it the peak of the parent that started it, which says nothing of its own memory."""
    peak = proc_status_mb("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 if peak is None else peak


def proc_status_mb(field: str) -> float | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in MB; None off Linux."""
    key = field.encode() + b":"
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(key):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _error_header(error: BaseException) -> dict[str, Any]:
    if isinstance(error, AudiotokError):
        return {"ok": False, "reason": error.reason, "message": error.message, "transient": error.transient}
    if isinstance(error, MemoryError):
        return {"ok": False, "reason": failures.OUT_OF_MEMORY, "message": "out of memory while decoding"}
    if failures.is_transient(error):  # the storage, not a bug: retried by the next refresh
        return {"ok": False, "reason": failures.READ_ERROR, "message": f"{type(error).__name__}: {error}",
                "transient": True}
    # a bug: still one record, with the traceback for the log
    return {"ok": False, "reason": failures.DECODE_ERROR, "message": f"{type(error).__name__}: {error}",
            "unexpected": True, "traceback": "".join(traceback.format_exception(error, limit=8))}


def _send(conn, header: dict[str, Any], samples: np.ndarray | None = None) -> None:
    conn.send_bytes(_encode(header))
    if samples is not None:
        _write_all(conn.fileno(), memoryview(samples).cast("B"))


def _answer_open(conn, decoder: FileDecoder, config: DecodeConfig, request: dict[str, Any]) -> None:
    split = None if request.get("split") is None else SplitConfig(**request["split"])
    try:
        opened = decoder.open(AudioRef(uri=request["uri"]), config, split)
    except Exception as e:
        _send(conn, _error_header(e))
        return
    if isinstance(opened, Plan):
        _send(conn, {"ok": True, "kind": "plan", "probe": opened.probe.to_json(), "cuts": list(opened.cuts), "repair": opened.repair.to_json(), "notes": list(opened.notes),
                     "frames": opened.frames, "max_rss_mb": peak_rss_mb()})
        return
    decoded, notes = opened
    samples = np.ascontiguousarray(decoded.audio, dtype=np.float32).reshape(-1)
    _send(conn, {"ok": True, "kind": "whole", "samples": int(samples.size), "sample_rate": int(decoded.sample_rate),
                 "source_sample_rate": int(decoded.source_sample_rate),
                 "source_channels": int(decoded.source_channels), "source_format": str(decoded.source_format),
                 "notes": [str(n) for n in notes], "max_rss_mb": peak_rss_mb()}, samples)


def _answer_stretch(conn, decoder: FileDecoder, config: DecodeConfig, request: dict[str, Any]) -> None:
    try:
        item = _item_from_json(request["item"])
        for chunk in decoder.stretch(item, config, float(request["chunk_s"])):
            chunk = np.ascontiguousarray(chunk, dtype=np.float32)
            if chunk.size:
                _send(conn, {"ok": True, "kind": "chunk", "samples": int(chunk.size)}, chunk)
    except (BrokenPipeError, ConnectionResetError):
        raise
    except Exception as e:
        _send(conn, _error_header(e))
        return
    _send(conn, {"ok": True, "kind": "end", "max_rss_mb": peak_rss_mb()})


def serve(conn, config: DecodeConfig, environ: dict[str, str] | None = None) -> None:
    """The decoder process: answers one request after another until the pipe closes."""
    if environ is not None:
        os.environ.clear()
        os.environ.update(environ)
    try:
        decoder = resolve_decoder(config.decoder)()
    except Exception as e:  # a bad decoder path: say so instead of dying silently
        conn.send_bytes(json.dumps({"ready": False, "error": f"{type(e).__name__}: {e}"}).encode())
        return
    conn.send_bytes(b'{"ready": true}')
    answers = {"open": _answer_open, "stretch": _answer_stretch}
    while True:
        try:
            request = json.loads(conn.recv_bytes())
            answers[request["op"]](conn, decoder, config, request)
        except (EOFError, OSError):
            return


def _write_all(fd: int, view: memoryview) -> None:
    pos = 0
    while pos < len(view):
        pos += os.write(fd, view[pos: pos + (1 << 24)])


def make_decoder(config: DecodeConfig, split: SplitConfig | None = None) -> InProcessDecoder | ProcessDecoder:
    """The decoder ``config.isolation`` asks for."""
    return ProcessDecoder(config, split) if config.isolation == "process" else InProcessDecoder(config, split)
