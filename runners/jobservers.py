"""Job servers for Beam's portable runners: the Spark and Flink job-server jars (fetched with
Maven) and the Prism runner's binary (built with ``go install``), and our cache of them.

The Python ``SparkRunner``/``FlinkRunner`` start ``java -jar JOB_SERVER_JAR``; a job server
must come from the same Beam release as the Python SDK. Beam downloads the jar itself from
Maven Central when it can; this module fetches it with ``mvn`` instead (which honours the
Maven mirrors and proxies of ``~/.m2/settings.xml``) into ``~/.cache/audiotok/jars``, so
that the ``spark`` and ``flink`` profiles, and the tests, find it there::

    python -m audiotok.runners.jobservers fetch spark            # prints the jar's path
    python -m audiotok.runners.jobservers fetch flink --flink-version 1.19
    python -m audiotok.runners.jobservers fetch prism            # go install of Beam's Go SDK prism command

Beam's ``PrismRunner`` downloads a prism release from GitHub when given no
``--prism_location``; ``go install`` goes through the Go module proxy (``GOPROXY``) instead.

A failed fetch is remembered for a day (``*.missing`` beside the jars) so that set-ups that
try it on every run do not pay Maven's start-up each time.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import apache_beam
from apache_beam.options.pipeline_options import FlinkRunnerOptions

GROUP = "org.apache.beam"
RUNNERS = ("spark", "flink")
PRISM_MODULE = "github.com/apache/beam/sdks/v2/go/cmd/prism"
# Beam's own default: the newest Flink it publishes a job server for.
DEFAULT_FLINK_VERSION = FlinkRunnerOptions.PUBLISHED_FLINK_VERSIONS[-1]
MISSING_TTL_S = 24 * 3600
FETCH_TIMEOUT_S = 600


class JarUnavailable(RuntimeError):
    """A job server (jar or prism binary) that could not be fetched (message says what was tried)."""


@dataclasses.dataclass(frozen=True)
class JarCoordinates:
    """A job-server jar on Maven: ``group:artifact:version``."""

    artifact: str
    version: str
    group: str = GROUP

    @property
    def gav(self) -> str:
        return f"{self.group}:{self.artifact}:{self.version}"

    @property
    def file_name(self) -> str:
        return f"{self.artifact}-{self.version}.jar"


def coordinates(runner: str, beam_version: str | None = None,
                flink_version: str = DEFAULT_FLINK_VERSION) -> JarCoordinates:
    """The job-server jar of ``runner`` (``spark`` or ``flink``) for a Beam release (default:
    the installed SDK's)."""
    version = beam_version or apache_beam.__version__
    if runner == "spark":
        return JarCoordinates("beam-runners-spark-3-job-server", version)
    if runner == "flink":
        return JarCoordinates(f"beam-runners-flink-{flink_version}-job-server", version)
    raise ValueError(f"unknown runner {runner!r}; known: {', '.join(RUNNERS)}")


def cache_dir() -> Path:
    """``$AUDIOTOK_JAR_CACHE``, else ``$XDG_CACHE_HOME/audiotok/jars``, else ``~/.cache/audiotok/jars``."""
    explicit = os.environ.get("AUDIOTOK_JAR_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "audiotok" / "jars"


def cached_jar(coords: JarCoordinates) -> Path | None:
    """The cached jar, when it has been fetched."""
    path = cache_dir() / coords.file_name
    return path if path.is_file() and path.stat().st_size > 0 else None


def fetch_jar(coords: JarCoordinates, timeout_s: float = FETCH_TIMEOUT_S, retry_missing: bool = False) -> Path:
    """The jar in the cache, fetched with ``mvn dependency:copy`` when not there yet.

    Raises:
        JarUnavailable: Maven is not installed, did not serve the jar, or timed out; or it
            failed within the last day and ``retry_missing`` is false.
    """
    mvn = shutil.which("mvn")
    # A short-lived JVM: skipping the optimising compiler halves Maven's CPU time.
    env = {**os.environ, "MAVEN_OPTS": (os.environ.get("MAVEN_OPTS", "")
                                        + " -XX:TieredStopAtLevel=1 -XX:+UseSerialGC").strip()}
    return _fetch_into_cache(
        coords.file_name, coords.gav, "Maven (mvn)" if not mvn else None,
        lambda tmp: ([mvn, "-q", "-B", "dependency:copy", f"-Dartifact={coords.gav}:jar", f"-DoutputDirectory={tmp}",
                      "-Dmdep.overWriteReleases=true"], env, Path(tmp) / coords.file_name),
        _maven_error, timeout_s, retry_missing)


def prism_file_name(beam_version: str | None = None) -> str:
    return f"prism-{beam_version or apache_beam.__version__}"


def cached_prism(beam_version: str | None = None) -> Path | None:
    """The cached prism binary of a Beam release (default: the installed SDK's), when built."""
    path = cache_dir() / prism_file_name(beam_version)
    return path if path.is_file() and os.access(path, os.X_OK) else None


def fetch_prism(beam_version: str | None = None, timeout_s: float = FETCH_TIMEOUT_S,
                retry_missing: bool = False) -> Path:
    """The prism binary in the cache, built with ``go install PRISM_MODULE@vVERSION`` when not
    there yet (the Go module proxy serves Beam's Go SDK; a first build takes a few minutes).

    Raises:
        JarUnavailable: Go is not installed, the proxy did not serve the module, or the build
            failed or timed out; or it failed within the last day and ``retry_missing`` is false.
    """
    version = beam_version or apache_beam.__version__
    go = shutil.which("go")
    module = f"{PRISM_MODULE}@v{version}"
    return _fetch_into_cache(
        prism_file_name(version), module, "Go (go)" if not go else None,
        lambda tmp: ([go, "install", module], {**os.environ, "GOBIN": tmp}, Path(tmp) / "prism"),
        _go_error, timeout_s, retry_missing)


def _fetch_into_cache(file_name: str, what: str, missing_tool: str | None, plan, error_of, timeout_s: float,
                      retry_missing: bool) -> Path:
    """``cache_dir()/file_name``, made by running ``plan(tmp) -> (command, env, produced)`` in a
    temporary folder of the cache when it is not there yet; failures are remembered a day."""
    final = cache_dir() / file_name
    if final.is_file() and final.stat().st_size > 0:
        return final
    marker = cache_dir() / (file_name + ".missing")
    if not retry_missing and marker.is_file() and time.time() - marker.stat().st_mtime < MISSING_TTL_S:
        raise JarUnavailable(f"{what}: not served the last time it was tried ({marker}): "
                             + marker.read_text(encoding="utf-8", errors="replace")[:500])
    if missing_tool:
        raise JarUnavailable(f"{what}: {missing_tool} is not installed")
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent) as tmp:
        command, env, produced = plan(tmp)
        try:
            done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=timeout_s, env=env)
            failure = "" if done.returncode == 0 else error_of(done.stdout + done.stderr)
        except subprocess.TimeoutExpired:
            failure = f"{Path(command[0]).name} timed out after {timeout_s:.0f} s"
        if not failure and produced.is_file():
            os.replace(produced, final)  # whole or nothing: a killed fetch leaves no half file
            marker.unlink(missing_ok=True)
            return final
    failure = failure or f"{Path(command[0]).name} reported success but wrote nothing"
    marker.write_text(failure + "\n", encoding="utf-8")
    raise JarUnavailable(f"{what}: {failure}")


def _go_error(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip() and not line.startswith("go: downloading")]
    return (lines[-1] if lines else output.strip()[-500:])[:500]


def _maven_error(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if "ERROR" in line and line.strip() != "[ERROR]"]
    return (lines[0] if lines else output.strip()[-500:]).replace("\x1b[0m", "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m audiotok.runners.jobservers", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="fetch a job-server jar into the cache; prints its path")
    fetch.add_argument("runner", choices=RUNNERS + ("prism",))
    fetch.add_argument("--beam-version", default=None, help=f"default: the installed SDK's ({apache_beam.__version__})")
    fetch.add_argument("--flink-version", default=DEFAULT_FLINK_VERSION)
    fetch.add_argument("--retry", action="store_true", help="try again even if it failed within the last day")
    args = parser.parse_args(argv)
    try:
        if args.runner == "prism":
            print(fetch_prism(args.beam_version, retry_missing=args.retry))
        else:
            print(fetch_jar(coordinates(args.runner, args.beam_version, args.flink_version), retry_missing=args.retry))
    except JarUnavailable as e:
        print(f"jobservers: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
