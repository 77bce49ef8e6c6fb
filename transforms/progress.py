"""Progress lines for local runs: a log line at most every few seconds per process."""

from __future__ import annotations

import logging
import time

logger = logging.getLogger("audiotok.progress")


class Progress:
    """Counts items and seconds of audio; logs a line at most every ``every_s`` seconds."""

    def __init__(self, what: str, every_s: float = 5.0):
        self.what = what
        self.every_s = every_s
        self.items = 0
        self.audio_s = 0.0
        self._start = time.monotonic()
        self._last = self._start

    def add(self, audio_s: float, items: int = 1) -> None:
        self.items += items
        self.audio_s += audio_s
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            elapsed = now - self._start
            logger.info("%s %d files, %.1f min of audio (%.0fx real time in this worker)",
                        self.what, self.items, self.audio_s / 60, self.audio_s / max(elapsed, 1e-9))
