"""What every benchmark records about the machine it ran on."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any, Sequence


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (empty where the platform has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine_info(modules: Sequence[str] = ()) -> dict[str, Any]:
    """CPU model and count, platform, Python, and the version of each of ``modules`` (None if absent)."""
    info: dict[str, Any] = {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    for module in modules:
        try:
            info[module] = getattr(__import__(module), "__version__", None)
        except ImportError:
            info[module] = None
    return info
