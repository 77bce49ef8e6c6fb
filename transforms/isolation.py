"""Decoding behind a process boundary: a native crash or a hang costs one file, not the worker.

``make_decoder(config)`` returns what ``DecodeAudio``'s DoFn calls, once per file:

* ``InProcessDecoder`` (``isolation="none"``) runs ``config.decoder`` in the worker; the time
  limit is checked between decoded chunks, a crash takes the worker down.
* ``ProcessDecoder`` (``isolation="process"``, the default) keeps one child process per
  DoFn instance (so one per decoding thread), reused file after file. The parent sends the
  URI, the child reads and decodes it with ``config.decoder`` and sends back a small JSON
  header and the mono float32 samples as raw bytes. When the child dies (SIGSEGV, abort,
  OOM kill) the file becomes a ``decoder_crash`` record; when it does not answer within
  ``timeout_s`` (plus a grace period) it is killed and the file becomes a ``timeout``
  record. Either way the next file starts a fresh child.

Nothing the child sends is unpickled: it is JSON plus raw float32 bytes of a size checked
against the limits, so even a decoder compromised by a hostile file cannot make the
parent run code. Children start from a ``forkserver`` that has imported the decoding
modules once (not Beam: ~0.3 s), so a restart costs milliseconds (``spawn`` works too, at ~0.5 s a start).
"""

from __future__ import annotations

import contextlib
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
from typing import Any

import numpy as np

from audiotok.transforms import failures
from audiotok.transforms.decode import DecodeConfig, decode_checked, resolve_decoder
from audiotok.transforms.failures import AudiotokError
from audiotok.transforms.records import AudioRef, Decoded

logger = logging.getLogger(__name__)

# Extra wait beyond timeout_s before the child is killed: the child's own deadline (checked
# between chunks) answers first with a clean ``timeout`` when it can.
GRACE_S = 2.0
# A fresh child must say it is ready within this (imports included).
STARTUP_TIMEOUT_S = 120.0
_MAX_HEADER_BYTES = 1 << 16
# Not "__main__": the forkserver would run the parent's main script again (a script without an
# ``if __name__ == "__main__"`` guard would start the job inside it; one read from stdin cannot
# be found). A custom ``DecodeConfig.decoder`` must live in an importable module.
_PRELOAD = ["audiotok.transforms.isolation", "audiotok.transforms.decode"]
_forkserver_lock = threading.Lock()


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
    """Runs ``config.decoder`` in this process (no protection from native crashes or hangs)."""

    def __init__(self, config: DecodeConfig):
        self.config = config
        self._fn = decode_checked if config.decoder == DecodeConfig.decoder else resolve_decoder(config.decoder)

    def decode(self, ref: AudioRef) -> tuple[Decoded, tuple[str, ...]]:
        return self._fn(ref, self.config)

    def close(self) -> None:
        pass


class ProcessDecoder:
    """Decodes in one reused child process, restarted after a crash or a timeout.

    Args:
        config: the decode configuration (the child gets a copy at start).
        start_method: ``forkserver`` (default; fast restarts) or ``spawn``.

    Not thread-safe: one instance per thread (Beam gives each thread its own DoFn).
    """

    def __init__(self, config: DecodeConfig, start_method: str = "forkserver"):
        if start_method not in ("forkserver", "spawn"):
            raise ValueError(f"start_method must be forkserver or spawn. Found: {start_method!r}")
        if start_method not in multiprocessing.get_all_start_methods():  # Windows: spawn only
            start_method = "spawn"
        self.config = config
        self.start_method = start_method
        self.restarts = 0
        self.max_rss_mb = 0.0  # the largest peak resident memory a decoder process reported
        self._process = None
        self._conn = None

    @property
    def pid(self) -> int | None:
        """The decoder process's id (None before the first file or after a crash)."""
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

    def _stop(self, kill: bool) -> int | None:
        """Ends the child; returns its exit code."""
        process, conn = self._process, self._conn
        self._process = self._conn = None
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

    # -- one file

    def decode(self, ref: AudioRef) -> tuple[Decoded, tuple[str, ...]]:
        """Decodes ``ref`` in the child.

        Raises:
            AudiotokError: what the decoder raised, or ``timeout`` / ``decoder_crash``.
        """
        if self._process is None or not self._process.is_alive():
            if self._process is not None:
                self._stop(kill=True)
            self._start()
        conn = self._conn
        timeout = self.config.timeout_s
        try:
            conn.send_bytes(ref.uri.encode("utf-8", "surrogateescape"))
            header = self._receive_header(conn, None if timeout is None else timeout + GRACE_S)
            if not header.get("ok"):
                reason = header.get("reason")
                reason = reason if reason in failures.REASONS else failures.DECODE_ERROR
                if header.get("unexpected"):
                    logger.warning("decoder bug on %s: %s", failures.redact(failures.printable(ref.uri)),
                                   failures.redact(str(header.get("traceback", ""))))
                raise AudiotokError(reason, str(header.get("message", "")), ref.uri,
                                    transient=header.get("transient") is True)
            samples = self._receive_samples(conn, header)
            self.max_rss_mb = max(self.max_rss_mb, header["max_rss_mb"])
        except _ChildTimeout:
            self._stop(kill=True)
            self.restarts += 1
            raise AudiotokError(failures.TIMEOUT, f"no answer within {timeout:g} s (+{GRACE_S:g} s grace); the decoder "
                                "process was killed and restarted", ref.uri) from None
        except (EOFError, OSError, _ProtocolError) as e:
            code = self._stop(kill=True)
            self.restarts += 1
            what = _exit_description(code)
            detail = f": {e}" if isinstance(e, _ProtocolError) else ""
            raise AudiotokError(failures.DECODER_CRASH, f"the decoder process died ({what}){detail}; restarted",
                                ref.uri) from None
        decoded = Decoded(source=ref, audio=samples, sample_rate=header["sample_rate"],
                          source_sample_rate=header["source_sample_rate"],
                          source_channels=header["source_channels"], source_format=header["source_format"])
        return decoded, tuple(header["notes"])

    def _receive_header(self, conn, timeout: float | None) -> dict[str, Any]:
        if not conn.poll(timeout):
            raise _ChildTimeout()
        raw = conn.recv_bytes(_MAX_HEADER_BYTES)
        try:
            header = json.loads(raw)
        except ValueError:
            raise _ProtocolError("an unreadable answer") from None
        if not isinstance(header, dict):
            raise _ProtocolError("an unreadable answer")
        if header.get("ok"):
            _check_header(header, self.config)
        return header

    def _receive_samples(self, conn, header: dict[str, Any]) -> np.ndarray:
        """Reads exactly ``samples`` float32 values straight into a fresh array (one copy, no pickle)."""
        samples = np.empty(header["samples"], np.float32)
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


def _check_header(header: dict[str, Any], config: DecodeConfig) -> None:
    """A success header must describe an array the limits allow; anything else is a protocol error."""
    ints = ("samples", "sample_rate", "source_sample_rate", "source_channels")
    if not all(type(header.get(k)) is int for k in ints):
        raise _ProtocolError("a malformed header")
    if header["sample_rate"] <= 0 or header["source_sample_rate"] <= 0 or header["source_channels"] <= 0:
        raise _ProtocolError("a malformed header")
    limit = config.max_frames(header["sample_rate"], 1)
    if not 0 <= header["samples"] <= limit:
        raise _ProtocolError(f"{header['samples']} samples, beyond the limits ({limit})")
    if not isinstance(header.get("source_format"), str) or type(header.get("max_rss_mb")) not in (int, float):
        raise _ProtocolError("a malformed header")
    notes = header.get("notes")
    if not isinstance(notes, list) or not all(isinstance(n, str) and n.isidentifier() for n in notes):
        raise _ProtocolError("malformed notes")


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


def serve(conn, config: DecodeConfig, environ: dict[str, str] | None = None) -> None:
    """The decoder process: answers one URI after another until the pipe closes."""
    if environ is not None:
        os.environ.clear()
        os.environ.update(environ)
    try:
        decode = resolve_decoder(config.decoder)
    except Exception as e:  # a bad --decoder path: say so instead of dying silently
        conn.send_bytes(json.dumps({"ready": False, "error": f"{type(e).__name__}: {e}"}).encode())
        return
    conn.send_bytes(b'{"ready": true}')
    while True:
        try:
            request = conn.recv_bytes()
        except (EOFError, OSError):
            return
        uri = request.decode("utf-8", "surrogateescape")
        try:
            decoded, notes = decode(AudioRef(uri=uri), config)
            samples = np.ascontiguousarray(decoded.audio, dtype=np.float32).reshape(-1)
            header = {"ok": True, "samples": int(samples.size), "sample_rate": int(decoded.sample_rate),
                      "source_sample_rate": int(decoded.source_sample_rate),
                      "source_channels": int(decoded.source_channels),
                      "source_format": str(decoded.source_format), "notes": [str(n) for n in notes],
                      "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        except AudiotokError as e:
            header = {"ok": False, "reason": e.reason, "message": e.message, "transient": e.transient}
        except MemoryError:
            header = {"ok": False, "reason": failures.OUT_OF_MEMORY, "message": "out of memory while decoding"}
        except Exception as e:  # a bug: still one record, with the traceback for the log
            header = {"ok": False, "reason": failures.DECODE_ERROR, "message": f"{type(e).__name__}: {e}",
                      "unexpected": True, "traceback": traceback.format_exc(limit=8)}
        try:
            conn.send_bytes(json.dumps(header, ensure_ascii=True).encode("ascii"))
            if header["ok"]:
                _write_all(conn.fileno(), memoryview(samples).cast("B"))
        except (BrokenPipeError, OSError):
            return


def _write_all(fd: int, view: memoryview) -> None:
    pos = 0
    while pos < len(view):
        pos += os.write(fd, view[pos: pos + (1 << 24)])


def make_decoder(config: DecodeConfig) -> InProcessDecoder | ProcessDecoder:
    """The decoder ``config.isolation`` asks for."""
    return ProcessDecoder(config) if config.isolation == "process" else InProcessDecoder(config)
