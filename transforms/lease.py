"""One writer per dataset: a lease on the output, taken before a run plans anything.

The lease is one small object, ``OUTPUT/_lease.json``: who holds it (a run id, host, process)
and until when. It is created only where none exists (``O_EXCL`` locally, ``If-None-Match: *``
on S3, ``ifGenerationMatch=0`` on GCS: :func:`audiotok.transforms.storage.write_atomic`), kept
alive by a heartbeat thread that rewrites it, conditional on its own generation, every third
of its time to live, and deleted when the run ends. A second run finds it and refuses (or waits
for it); a lease whose holder stopped renewing it (a run killed with ``kill -9``, a machine that
died) is taken over once it expires, or at once when its holder was a process on this machine
that no longer exists.

A lease only keeps honest writers apart; what makes a publish safe is that it is
conditional on the index it planned from (compare-and-swap on the index's generation), and
that the publishing step checks it still holds the lease (:func:`check_owner`) before it
renames anything into place.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any, Callable

from audiotok.transforms import storage

logger = logging.getLogger(__name__)

LEASE_NAME = "_lease.json"
LEASE_FORMAT = "audiotok-lease"
# A lease held by a process lives this long without a heartbeat; the heartbeat renews it three
# times as often.
DEFAULT_TTL_S = 120.0
# A job launched without waiting (a Dataflow Flex Template) holds its lease without a heartbeat;
# its publishing step releases it, and it expires after this long if the job never gets there.
JOB_TTL_S = 6 * 3600.0
_POLL_S = 2.0
# Exit status of a command refused because another run holds the lease: try again later
# (sysexits' EX_TEMPFAIL).
EXIT_BUSY = 75


class LeaseHeld(RuntimeError):
    """Another run holds the dataset's lease."""


class LeaseLost(RuntimeError):
    """This run's lease was taken over (it stopped renewing it for longer than its time to live)."""


def lease_url(output: str) -> str:
    return storage.join(output, LEASE_NAME)


def new_owner() -> str:
    """A run id: unique across machines and processes."""
    return uuid.uuid4().hex


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> str:
    """When process ``pid`` started (clock ticks since boot), or "" where /proc does not say."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


@dataclasses.dataclass(frozen=True)
class LeaseRecord:
    """What ``_lease.json`` holds.

    Attributes:
        owner: the run id.
        expires_at: Unix time after which the lease is stale.
        ttl_s: how long each renewal lasts.
        host, boot_id, pid, pid_start: the holding process, to tell at once that it is gone
            (only when ``held_by`` is ``process`` and the host and boot are this machine's).
        held_by: ``process`` (renewed by a heartbeat) or ``job`` (a launched job, no heartbeat).
        command: what holds it (``tokenize``, ``compact``, ``gc``).
    """

    owner: str
    expires_at: float
    ttl_s: float
    host: str = ""
    boot_id: str = ""
    pid: int = 0
    pid_start: str = ""
    held_by: str = "process"
    command: str = ""

    def to_bytes(self) -> bytes:
        return json.dumps({"format": LEASE_FORMAT, **dataclasses.asdict(self)}, sort_keys=True).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> "LeaseRecord":
        raw = json.loads(data)
        if not isinstance(raw, dict) or raw.get("format") != LEASE_FORMAT:
            raise ValueError("not an audiotok lease")
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in fields})

    def holder_is_gone(self) -> bool:
        """True when the holder was a process on this machine (same host, same boot) that no
        longer runs: it was killed, and nothing will renew or release the lease."""
        if self.held_by != "process" or not self.pid or self.host != socket.gethostname() \
                or not self.boot_id or self.boot_id != _boot_id():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False  # alive, another user's
        return bool(self.pid_start) and _process_start(self.pid) not in ("", self.pid_start)

    def describe(self, now: float) -> str:
        left = self.expires_at - now
        when = f"expires in {left:.0f} s" if left > 0 else f"expired {-left:.0f} s ago"
        who = f"process {self.pid} on {self.host}" if self.held_by == "process" else "a launched job"
        return f"run {self.owner[:12]} ({self.command or 'audiotok'}, {who}; {when})"


class Lease:
    """The lease of one run on one dataset; a context manager that holds it with a heartbeat.

    Args:
        output: the dataset folder (any fsspec URL).
        owner: the run id (default: a fresh one).
        ttl_s: how long the lease lasts without a renewal.
        command: what takes it, for the message a second run sees.
        held_by: ``process`` (heartbeat, released on exit) or ``job`` (see :data:`JOB_TTL_S`).
        clock: Unix time (tests).
    """

    def __init__(self, output: str, owner: str | None = None, ttl_s: float = DEFAULT_TTL_S, command: str = "",
                 held_by: str = "process", clock: Callable[[], float] = time.time):
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0. Found: {ttl_s}")
        if held_by not in ("process", "job"):
            raise ValueError(f"held_by must be process or job. Found: {held_by!r}")
        self.output = output
        self.url = lease_url(output)
        self.owner = owner or new_owner()
        self.ttl_s = ttl_s
        self.command = command
        self.held_by = held_by
        self._clock = clock
        self._generation: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: str | None = None

    def _record(self) -> LeaseRecord:
        pid = os.getpid()
        return LeaseRecord(owner=self.owner, expires_at=round(self._clock() + self.ttl_s, 3), ttl_s=self.ttl_s,
                           host=socket.gethostname(), boot_id=_boot_id(), pid=pid, pid_start=_process_start(pid),
                           held_by=self.held_by, command=self.command)

    # -- taking it

    def acquire(self, wait_s: float = 0.0) -> "Lease":
        """Takes the lease, waiting up to ``wait_s`` seconds for another run to release it.

        Raises:
            LeaseHeld: another run holds it (after ``wait_s``), with who and until when.
            PermissionError, OSError: the output cannot be written (the lease is the run's
                first write there).
        """
        deadline = time.monotonic() + max(0.0, wait_s)
        announced = False
        while True:
            holder = self._try_acquire()
            if holder is None:
                return self
            now = self._clock()
            if time.monotonic() >= deadline:
                raise LeaseHeld(f"{self.output} is being written by another {holder.describe(now)}; "
                                "try again later, or pass --wait-for-lock SECONDS to wait for it")
            if not announced:
                logger.warning("%s is being written by another %s; waiting up to %.0f s", self.output,
                               holder.describe(now), wait_s)
                announced = True
            time.sleep(min(_POLL_S, max(0.05, deadline - time.monotonic()), max(0.05, holder.expires_at - now)))

    def _try_acquire(self) -> LeaseRecord | None:
        """Takes the lease if it is free or stale; returns the other holder's record otherwise."""
        record = self._record()
        try:
            storage.write_atomic(self.url, record.to_bytes(), if_absent=True)
            self._generation = storage.generation(self.url)
            return None
        except storage.PreconditionFailed:
            pass
        try:
            data, gen = storage.read_versioned(self.url)
        except FileNotFoundError:
            return self._try_acquire()  # released in between
        try:
            held = LeaseRecord.from_bytes(data)
        except (ValueError, TypeError) as e:
            raise LeaseHeld(f"{self.url} is not an audiotok lease ({e}): remove it if no run is writing "
                            f"{self.output}") from None
        now = self._clock()
        if held.owner == self.owner:
            stale_reason = None  # ours already (a retried acquire)
        elif held.expires_at <= now:
            stale_reason = f"expired {now - held.expires_at:.0f} s ago"
        elif held.holder_is_gone():
            stale_reason = f"its process {held.pid} on this machine is gone"
        else:
            return held
        if not self._take_over(gen, record):
            return self._try_acquire_or_holder()
        if stale_reason:
            logger.warning("took over the lease on %s from %s: %s", self.output, held.describe(now), stale_reason)
        return None

    def _try_acquire_or_holder(self) -> LeaseRecord | None:
        # Someone else took the stale lease first: whoever holds it now is the holder.
        try:
            held = LeaseRecord.from_bytes(storage.read_bytes(self.url))
        except FileNotFoundError:
            return self._try_acquire()
        except (ValueError, TypeError):
            return LeaseRecord(owner="unknown", expires_at=self._clock() + self.ttl_s, ttl_s=self.ttl_s)
        return None if held.owner == self.owner else held

    def _take_over(self, stale_generation: str, record: LeaseRecord) -> bool:
        """Replaces the stale lease of generation ``stale_generation`` with ours; False when
        another run replaced it first."""
        fs, path = storage.filesystem(self.url)
        if not storage.is_local_fs(fs):
            try:
                storage.write_atomic(self.url, record.to_bytes(), if_generation=stale_generation)
            except storage.PreconditionFailed:
                return False
            self._generation = storage.generation(self.url)
            return True
        # Locally a check-then-replace is no compare-and-swap: move the stale file aside under a
        # unique name (one rename wins), check that what moved is the stale lease, then create ours.
        aside = f"{path}.stale-{uuid.uuid4().hex[:12]}"
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return False
        try:
            moved = storage.generation(aside)
            if moved != stale_generation:  # a fresh lease taken meanwhile: put it back
                try:
                    os.link(aside, path)
                except FileExistsError:
                    pass
                return False
        finally:
            os.unlink(aside)
        try:
            storage.write_atomic(self.url, record.to_bytes(), if_absent=True)
        except storage.PreconditionFailed:
            return False
        self._generation = storage.generation(self.url)
        return True

    # -- holding it

    def renew(self) -> None:
        """Rewrites the lease with a new expiry, conditional on it still being ours.

        Raises:
            LeaseLost: another run took it over.
        """
        with self._lock:
            if self.lost:
                raise LeaseLost(self.lost)
            try:
                storage.write_atomic(self.url, self._record().to_bytes(), if_generation=self._generation)
            except (storage.PreconditionFailed, FileNotFoundError):
                self.lost = (f"the lease on {self.output} was taken over by another run while this one held it "
                             "(it was not renewed in time): nothing more is published")
                raise LeaseLost(self.lost) from None
            self._generation = storage.generation(self.url)

    def start_heartbeat(self) -> "Lease":
        """Renews the lease every third of its time to live, in a daemon thread."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._beat, name="audiotok-lease", daemon=True)
            self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self.renew()
            except LeaseLost as e:
                logger.error("%s", e)
                return
            except OSError as e:  # the store is down: the next beat tries again, within the lease's time
                logger.warning("could not renew the lease on %s: %s", self.output, storage.redact(str(e)))

    def check(self) -> None:
        """Raises LeaseLost when this run no longer holds the lease."""
        if self.lost:
            raise LeaseLost(self.lost)
        check_owner(self.output, self.owner)

    def release(self) -> None:
        """Stops the heartbeat and deletes the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        with self._lock:
            release_if_owner(self.output, self.owner)

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def read_holder(output: str) -> LeaseRecord | None:
    """The current lease of ``output``, or None."""
    try:
        return LeaseRecord.from_bytes(storage.read_bytes(lease_url(output)))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):
        return LeaseRecord(owner="unknown", expires_at=0.0, ttl_s=0.0)


def check_owner(output: str, owner: str) -> None:
    """Raises LeaseLost unless run ``owner`` holds the lease of ``output`` (the publishing
    step calls this before it renames anything into place)."""
    held = read_holder(output)
    if held is None or held.owner != owner:
        who = "no run" if held is None else f"run {held.owner[:12]}"
        raise LeaseLost(f"run {owner[:12]} no longer holds the lease on {output} ({who} does): another run took "
                        "over after it stopped renewing it; nothing was published")


def release_if_owner(output: str, owner: str) -> None:
    """Deletes the lease of ``output`` if run ``owner`` holds it."""
    url = lease_url(output)
    try:
        data, _ = storage.read_versioned(url)
    except FileNotFoundError:
        return
    try:
        if LeaseRecord.from_bytes(data).owner != owner:
            return
    except (ValueError, TypeError):
        return
    storage.remove(url)
