"""Beam's portable runner on one machine: the Python local job service plus an external
worker pool, started and stopped together.

    python -m audiotok.runners.portable                    # serves until Ctrl-C; prints the flags to use
    audiotok tokenize --profile portable --job_endpoint=localhost:8099 \\
        --environment_type=EXTERNAL --environment_config=localhost:50000 ...

Workers of the pool are started by the pool, not by the job: they get **no pipeline
options**, only the pool's environment. Storage endpoints (``STORAGE_EMULATOR_HOST``,
``AWS_ENDPOINT_URL``) and credentials therefore have to be in the environment the pool
starts with. The pool starts ``python`` from ``PATH``: the interpreter that runs this
module is put first. A worker's stdout is a pipe nobody reads: our code logs to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import sys
import time
from pathlib import Path
from typing import Iterator, Mapping

from audiotok.runners.services import Service, free_port, tcp_ready

# The folder holding the pipelines/, transforms/ and runners/ packages (a source checkout,
# or site-packages when installed).
PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])


def worker_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a worker pool: ``base`` (default: this process's), with this
    interpreter's folder first on PATH and our packages importable."""
    env = dict(os.environ if base is None else base)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_ROOT, env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def job_service(port: int | None = None, env: Mapping[str, str] | None = None) -> Service:
    """Beam's Python local job service on ``port`` (a free one by default). Not started."""
    port = port or free_port()
    return Service(f"local job service on :{port}",
                   [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main", f"--port={port}"],
                   ready=tcp_ready(port), env=worker_env(env), cwd=PACKAGE_ROOT, port=port)


def worker_pool(port: int | None = None, env: Mapping[str, str] | None = None) -> Service:
    """Beam's external worker pool on ``port`` (a free one by default). Not started."""
    port = port or free_port()
    return Service(f"worker pool on :{port}",
                   [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main", f"--service_port={port}"],
                   ready=tcp_ready(port), env=worker_env(env), cwd=PACKAGE_ROOT, port=port)


@dataclasses.dataclass(frozen=True)
class PortableEndpoints:
    """Where a started job service and worker pool listen."""

    job_port: int
    worker_port: int

    def flags(self) -> list[str]:
        """The Beam flags that send a pipeline to them (profile ``portable``)."""
        return [f"--job_endpoint=localhost:{self.job_port}", "--environment_type=EXTERNAL",
                f"--environment_config=localhost:{self.worker_port}"]


@contextlib.contextmanager
def local_portable(job_port: int | None = None, worker_port: int | None = None,
                   env: Mapping[str, str] | None = None) -> Iterator[PortableEndpoints]:
    """Starts a job service and a worker pool; stops both (and every worker) on exit."""
    with job_service(job_port, env) as jobs, worker_pool(worker_port, env) as pool:
        yield PortableEndpoints(job_port=jobs.port, worker_port=pool.port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m audiotok.runners.portable", description=__doc__.split("\n\n")[0])
    parser.add_argument("--job-port", type=int, default=8099)
    parser.add_argument("--worker-port", type=int, default=50000)
    args = parser.parse_args(argv)
    # SIGTERM (kill, timeout, a supervisor) unwinds like Ctrl-C, so both services stop too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with local_portable(args.job_port, args.worker_port) as endpoints:
        print("job service and worker pool are up; run with:\n  audiotok tokenize --profile portable "
              + " ".join(endpoints.flags()) + " ...\n(Ctrl-C stops them)", file=sys.stderr)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
    return 0


if __name__ == "__main__":
    sys.exit(main())
