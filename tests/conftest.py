"""Shared pytest set-up: markers, the repo on sys.path, shared fixtures."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

# gcsfs must see this before it is imported anywhere (see tests/emulators.py).
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: integration tests (emulators, runners); still run in CI")
    config.addinivalue_line("markers", "spark_flink: the job on Spark and Flink job servers (Java, Maven, root); "
                            "still run in CI")


@pytest.fixture(scope="session")
def example_corpus() -> Path:
    return ROOT / "examples" / "corpus"


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests: tiny models gain nothing from threads, and lose a
    lot when the machine is busy. The setting is restored afterwards."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
