"""How a process that runs audiotok's jobs uses Python's cyclic garbage collector.

Importing Beam and torch and building a job make some hundred thousand objects that live as long
as the process. Python's collector walks all of them again at every full collection (six while a
job starts, ~0.5 s on a 2-core machine) and once more when the interpreter exits (~0.6 s in each
process that imported torch; a run with worker processes pays it once per worker, one after
another). Objects that live until the end gain nothing from either walk:

* :func:`startup` wraps a stretch that makes such objects (imports, building a job): the
  collector is off during it, and what it made is frozen out of later collections (``gc.freeze``)
  when it ends. Only in a process :func:`own_process` was called in (the ``audiotok`` command's);
  elsewhere (tests, notebooks, a trainer) it changes nothing.
* :func:`freeze_at_exit` freezes every object when the interpreter starts to exit, so that its
  last collection has nothing to walk: reference counting still frees objects, and ``atexit``
  handlers still run; only cycles left at exit are not collected, which the operating system
  reclaims with the process.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import threading
from typing import Iterator

_lock = threading.Lock()
_owned = False
_exit_registered = False


def freeze_at_exit() -> None:
    """Makes this process's exit skip the collector's walk over everything alive (idempotent)."""
    global _exit_registered
    with _lock:
        if not _exit_registered:
            atexit.register(gc.freeze)
            _exit_registered = True


def own_process() -> None:
    """Declares that audiotok owns this process (its command line does): :func:`startup`
    takes effect, and the exit is frozen (:func:`freeze_at_exit`)."""
    global _owned
    _owned = True
    freeze_at_exit()


def owned() -> bool:
    """Whether :func:`own_process` was called in this process."""
    return _owned


@contextlib.contextmanager
def startup() -> Iterator[None]:
    """In an owned process whose collector is on: the collector off while the block runs, and
    the objects alive when it ends (what it imported and built) frozen out of later
    collections. Elsewhere, nothing."""
    if not _owned or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()
