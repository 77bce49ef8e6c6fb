"""Local services in child processes: a job service, a worker pool, a storage emulator.

:class:`Service` starts a command in its own process group with its output in a log file
(never an unread pipe: a child that fills a pipe nobody reads blocks forever), waits until
it answers, and stops the whole group on exit, also when the block raised::

    with Service("job service", [sys.executable, "-m", "..."], ready=tcp_ready(port)) as svc:
        ...
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from typing import Callable, Mapping, Sequence

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 5.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tcp_ready(port: int, host: str = "127.0.0.1") -> Callable[[], bool]:
    """A readiness check: something accepts connections on ``host:port``."""
    def check() -> bool:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return True
        return False
    return check


def http_ready(url: str) -> Callable[[], bool]:
    """A readiness check: ``url`` answers HTTP (any status)."""
    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False
    return check


class ServiceError(RuntimeError):
    """A service that exited or did not answer in time; the message ends with its log."""


class Service:
    """A command run as a background service (see the module docstring).

    Args:
        name: named in errors.
        command: argv.
        ready: returns True once the service answers.
        env: the child's whole environment (default: this process's).
        cwd: the child's working directory.
        start_timeout_s: how long ``ready`` may take.
        port: the port it serves on, for its users (not used here).
    """

    def __init__(self, name: str, command: Sequence[str], ready: Callable[[], bool],
                 env: Mapping[str, str] | None = None, cwd: str | None = None,
                 start_timeout_s: float = START_TIMEOUT_S, port: int | None = None):
        self.name = name
        self.port = port
        self.command = list(command)
        self.ready = ready
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen | None = None
        self._log = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> "Service":
        self._log = tempfile.TemporaryFile(mode="w+b")
        self._proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=self._log,
                                      stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd,
                                      start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if self._proc.poll() is not None:
                raise ServiceError(f"{self.name} exited with {self._proc.returncode}: {self.log_tail()}")
            if self.ready():
                return
            if time.monotonic() > deadline:
                raise ServiceError(f"{self.name} did not answer within {self.start_timeout_s:.0f} s: "
                                   f"{self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the service's output so far."""
        if self._log is None:
            return ""
        self._log.seek(0, os.SEEK_END)
        size = self._log.tell()
        self._log.seek(max(0, size - chars))
        return self._log.read().decode("utf-8", "replace")

    def stop(self) -> None:
        """Stops the service's process group: SIGTERM, then SIGKILL after a grace period."""
        proc, self._proc = self._proc, None
        if proc is not None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)  # the group: workers the service forked go too
                try:
                    proc.wait(timeout=STOP_TIMEOUT_S)
                    break
                except subprocess.TimeoutExpired:
                    continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # children that outlived the leader
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "Service":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
