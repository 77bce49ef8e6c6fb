"""Job servers for Beam's portable runners: the Spark and Flink job-server jars (fetched with
Maven, or assembled from Beam's runner libraries for tests) and the Prism runner's binary
(built with ``go install``), and our cache of them.

The Python ``SparkRunner``/``FlinkRunner`` start ``java -jar JOB_SERVER_JAR``; a job server
must come from the same Beam release as the Python SDK. Beam downloads the jar itself from
Maven Central when it can; this module fetches it with ``mvn`` instead (which honours the
Maven mirrors and proxies of ``~/.m2/settings.xml``) into ``~/.cache/audiotok/jars``, so
that the ``spark`` and ``flink`` profiles, and the tests, find it there::

    python -m audiotok.runners.jobservers fetch spark            # prints the jar's path
    python -m audiotok.runners.jobservers fetch flink --flink-version 1.19
    python -m audiotok.runners.jobservers fetch prism            # go install of Beam's Go SDK prism command

Where Maven serves no job-server jar of the SDK's release, ``fetch spark|flink`` assembles a
*test job server* instead, and says so: Beam's non-shaded runner libraries of the one release
that Maven serves in full (:data:`TEST_BEAM_VERSION`, with Spark 3.2.2 or Flink 1.16), copied
by ``mvn dependency:copy-dependencies`` into a folder, plus a launcher jar of a few KB whose
manifest names the job server's main class, the class path and the ``--add-opens`` Java 17
needs. A job server of another Beam release than the SDK is not a pairing Beam supports: it is
for running the job locally (``local[N]``, ``[local]``) where the matching jar cannot be had,
not for production. log4j 1.x, which Spark 3.2 brings, is left out (log4j 2's bridge stands in).

Beam's ``PrismRunner`` downloads a prism release from GitHub when given no
``--prism_location``; ``go install`` goes through the Go module proxy (``GOPROXY``) instead.

A failed fetch is remembered for a day (``*.missing`` beside the jars) so that set-ups that
try it on every run do not pay Maven's start-up each time.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Mapping, Sequence

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
    env = _maven_env()
    return _fetch_into_cache(
        coords.file_name, coords.gav, "Maven (mvn)" if not mvn else None,
        lambda tmp: ([mvn, *_MAVEN_QUIET, "dependency:copy", f"-Dartifact={coords.gav}:jar", f"-DoutputDirectory={tmp}",
                      "-Dmdep.overWriteReleases=true"] + (["-U"] if retry_missing else []), env,
                     lambda: Path(tmp) / coords.file_name),
        _maven_error, timeout_s, retry_missing)


def _maven_env() -> dict[str, str]:
    # A short-lived JVM: skipping the optimising compiler halves Maven's CPU time.
    return {**os.environ, "MAVEN_OPTS": (os.environ.get("MAVEN_OPTS", "")
                                         + " -XX:TieredStopAtLevel=1 -XX:+UseSerialGC").strip()}


# ------------------------------------------------------------------ test job servers

# The one Beam release whose runner libraries Maven serves in full for both runners (the
# 2.65-2.77 job-service or runner artifacts are missing there).
TEST_BEAM_VERSION = "2.56.0"
LOG4J2_VERSION = "2.17.1"
# What Spark on Java 17 needs opened to the class path (Beam's launcher adds a few of them).
JAVA17_ADD_OPENS = tuple(f"java.base/{package}" for package in (
    "java.lang", "java.lang.invoke", "java.lang.reflect", "java.io", "java.net", "java.nio", "java.util",
    "java.util.concurrent", "java.util.concurrent.atomic", "sun.nio.ch", "sun.nio.cs", "sun.security.action",
    "sun.util.calendar"))
# log4j 1.x (end of life, with open CVEs) and its slf4j binding: never on our class paths.
LOG4J1 = ("log4j:log4j", "org.slf4j:slf4j-log4j12", "ch.qos.reload4j:reload4j", "org.slf4j:slf4j-reload4j")


@dataclasses.dataclass(frozen=True)
class AssembledJobServer:
    """A job server put together from Beam's non-shaded runner libraries on Maven.

    Attributes:
        runner: ``spark`` or ``flink``.
        engine: the Spark or Flink release it embeds, for messages.
        main_class: the job server's ``main``.
        dependencies: ``group:artifact:version`` resolved with their runtime dependencies.
        beam_version: the Beam release of the runner libraries.
    """

    runner: str
    engine: str
    main_class: str
    dependencies: tuple[str, ...]
    beam_version: str = TEST_BEAM_VERSION

    @property
    def name(self) -> str:
        """The cache folder, and the launcher jar's stem."""
        return f"beam-runners-{self.runner}-test-job-server-{self.beam_version}"

    @property
    def jar_name(self) -> str:
        return self.name + ".jar"

    def pom(self) -> str:
        """A Maven project that depends on everything the job server needs, log4j 1.x excluded."""
        exclusions = "".join(
            f"<exclusion><groupId>{g}</groupId><artifactId>{a}</artifactId></exclusion>"
            for g, a in (ga.split(":") for ga in LOG4J1))
        deps = "".join(
            f"\n    <dependency><groupId>{g}</groupId><artifactId>{a}</artifactId><version>{v}</version>"
            f"<exclusions>{exclusions}</exclusions></dependency>"
            for g, a, v in (gav.split(":") for gav in self.dependencies))
        return (f'<project xmlns="http://maven.apache.org/POM/4.0.0">\n  <modelVersion>4.0.0</modelVersion>\n'
                f"  <groupId>audiotok.test</groupId><artifactId>{self.name}</artifactId><version>1</version>"
                f"<packaging>pom</packaging>\n  <dependencies>{deps}\n  </dependencies>\n</project>\n")


def _beam(artifact: str) -> str:
    return f"{GROUP}:{artifact}:{TEST_BEAM_VERSION}"


_LOG4J2 = (f"org.apache.logging.log4j:log4j-slf4j-impl:{LOG4J2_VERSION}",
           f"org.apache.logging.log4j:log4j-core:{LOG4J2_VERSION}")
TEST_JOB_SERVERS = {
    "spark": AssembledJobServer(
        "spark", "Spark 3.2.2", "org.apache.beam.runners.spark.SparkJobServerDriver",
        # Beam's POM declares Spark "provided": the job server brings its own.
        (_beam("beam-runners-spark-3"), _beam("beam-runners-java-job-service"),
         _beam("beam-sdks-java-expansion-service"), "org.apache.spark:spark-core_2.12:3.2.2",
         "org.apache.spark:spark-streaming_2.12:3.2.2",
         # Spark's own 2.12 Scala module is nearer in the tree than Beam's, and refuses Beam's
         # jackson-databind 2.14 at start-up: the module of Beam's Jackson release.
         "com.fasterxml.jackson.module:jackson-module-scala_2.12:2.14.1",
         # Spark 3.2 logs through the log4j 1.x API: log4j 2's bridge serves it.
         f"org.apache.logging.log4j:log4j-1.2-api:{LOG4J2_VERSION}") + _LOG4J2),
    "flink": AssembledJobServer(
        "flink", "Flink 1.16.0", "org.apache.beam.runners.flink.FlinkJobServerDriver",
        (_beam("beam-runners-flink-1.16"), _beam("beam-runners-java-job-service"),
         _beam("beam-sdks-java-expansion-service")) + _LOG4J2),
}


def manifest(attributes: Mapping[str, str]) -> bytes:
    """A jar manifest: ``Name: value`` lines folded at 72 bytes (continuations start with a space)."""
    lines = []
    for name, value in attributes.items():
        line = f"{name}: {value}".encode("utf-8")
        lines.append(line[:72])
        lines += [b" " + line[i:i + 71] for i in range(72, len(line), 71)]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def write_launcher_jar(path: Path, main_class: str, class_path: Sequence[str],
                       add_opens: Sequence[str] = JAVA17_ADD_OPENS) -> Path:
    """A jar holding only a manifest: ``java -jar path`` runs ``main_class`` with ``class_path``
    (paths relative to the jar's folder) and the ``add_opens`` packages opened to it."""
    bad = [entry for entry in class_path if not _CLASS_PATH_ENTRY.fullmatch(entry)]
    if bad:
        raise ValueError(f"class path entries must be relative paths of [A-Za-z0-9._+/-]. Found: {bad}")
    text = manifest({"Manifest-Version": "1.0", "Created-By": "audiotok", "Main-Class": main_class,
                     "Class-Path": " ".join(class_path), "Add-Opens": " ".join(add_opens)})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as jar:
        info = zipfile.ZipInfo("META-INF/MANIFEST.MF", date_time=(1980, 1, 1, 0, 0, 0))
        jar.writestr(info, text, zipfile.ZIP_DEFLATED)
    return path


_CLASS_PATH_ENTRY = re.compile(r"[A-Za-z0-9._+-]+(/[A-Za-z0-9._+-]+)*")


def cached_test_job_server(runner: str) -> Path | None:
    """The launcher jar of ``runner``'s test job server, when it has been assembled."""
    server = _test_job_server(runner)
    path = cache_dir() / server.name / server.jar_name
    return path if _complete(path) else None


def assemble_test_job_server(runner: str, timeout_s: float = FETCH_TIMEOUT_S, retry_missing: bool = False) -> Path:
    """The test job server of ``runner`` in the cache (see the module docstring), assembled
    with ``mvn dependency:copy-dependencies`` when not there yet. Returns its launcher jar;
    the libraries are in ``lib/`` beside it.

    Raises:
        JarUnavailable: Maven is not installed, did not serve a library, or timed out; or it
            failed within the last day and ``retry_missing`` is false.
    """
    server = _test_job_server(runner)
    mvn = shutil.which("mvn")

    def plan(tmp: str):
        folder = Path(tmp) / server.name
        (folder / "lib").mkdir(parents=True)
        (Path(tmp) / "pom.xml").write_text(server.pom(), encoding="utf-8")
        command = [mvn, *_MAVEN_QUIET, "dependency:copy-dependencies", f"-DoutputDirectory={folder / 'lib'}",
                   "-DincludeScope=runtime"] + (["-U"] if retry_missing else [])
        return command, _maven_env(), lambda: _finish_test_job_server(server, folder)

    return _fetch_into_cache(server.name, f"{server.engine} job server from Beam {server.beam_version}'s libraries",
                             "Maven (mvn)" if not mvn else None, plan, _maven_error, timeout_s, retry_missing,
                             entry=server.jar_name)


def _finish_test_job_server(server: AssembledJobServer, folder: Path) -> Path:
    jars = sorted(p.name for p in (folder / "lib").glob("*.jar"))
    if not jars:
        raise JarUnavailable("mvn reported success but copied no jar")
    log4j1 = [j for j in jars if re.fullmatch(r"(log4j|slf4j-log4j12|reload4j|slf4j-reload4j)-[\d.]+\.jar", j)]
    if log4j1:
        raise JarUnavailable(f"log4j 1.x came in despite the exclusions: {log4j1}")
    write_launcher_jar(folder / server.jar_name, server.main_class, [f"lib/{j}" for j in jars])
    return folder


def _test_job_server(runner: str) -> AssembledJobServer:
    if runner not in TEST_JOB_SERVERS:
        raise ValueError(f"unknown runner {runner!r}; known: {', '.join(TEST_JOB_SERVERS)}")
    return TEST_JOB_SERVERS[runner]


def cached_job_server(runner: str, flink_version: str = DEFAULT_FLINK_VERSION) -> tuple[Path, bool] | None:
    """The job-server jar the ``spark``/``flink`` profiles use: the SDK's own when fetched,
    else the assembled test job server. Returns (jar, is_test_server), or None."""
    jar = cached_jar(coordinates(runner, flink_version=flink_version))
    if jar:
        return jar, False
    test = cached_test_job_server(runner)
    return (test, True) if test else None


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
        lambda tmp: ([go, "install", module], {**os.environ, "GOBIN": tmp}, lambda: Path(tmp) / "prism"),
        _go_error, timeout_s, retry_missing)


def _fetch_into_cache(name: str, what: str, missing_tool: str | None, plan, error_of, timeout_s: float,
                      retry_missing: bool, entry: str = "") -> Path:
    """``cache_dir()/name`` (a file, or with ``entry`` the folder holding ``entry``), made by
    running ``plan(tmp) -> (command, env, finish)`` in a temporary folder of the cache when it
    is not there yet; ``finish()`` returns what the command made (or raises JarUnavailable).
    Returns the file (``name/entry`` for a folder). Failures are remembered a day."""
    final = cache_dir() / name
    if _complete(final, entry):
        return final / entry if entry else final
    marker = cache_dir() / (name + ".missing")
    if not retry_missing and marker.is_file() and time.time() - marker.stat().st_mtime < MISSING_TTL_S:
        raise JarUnavailable(f"{what}: not served the last time it was tried ({marker}): "
                             + marker.read_text(encoding="utf-8", errors="replace")[:500].strip())
    if missing_tool:
        raise JarUnavailable(f"{what}: {missing_tool} is not installed")
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=f".{name}.") as tmp:
        command, env, finish = plan(tmp)
        try:
            done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=timeout_s, env=env, cwd=tmp)
            failure = "" if done.returncode == 0 else error_of(done.stdout + done.stderr)
        except subprocess.TimeoutExpired:
            failure = f"{Path(command[0]).name} timed out after {timeout_s:.0f} s"
        produced = None
        if not failure:
            try:
                produced = finish()
            except JarUnavailable as e:
                failure = str(e)
        if produced is not None and _complete(produced, entry):
            if entry and final.exists():
                shutil.rmtree(final)  # an incomplete folder (the entry is written last)
            os.replace(produced, final)  # whole or nothing: a killed fetch leaves no half file
            marker.unlink(missing_ok=True)
            return final / entry if entry else final
    failure = failure or f"{Path(command[0]).name} reported success but wrote nothing"
    marker.write_text(failure + "\n", encoding="utf-8")
    raise JarUnavailable(f"{what}: {failure}")


def _complete(path: Path, entry: str = "") -> bool:
    target = path / entry if entry else path
    return target.is_file() and target.stat().st_size > 0


def _go_error(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip() and not line.startswith("go: downloading")]
    return (lines[-1] if lines else output.strip()[-500:])[:500]


def _maven_error(output: str) -> str:
    """Maven's first error, and the first failed transfer behind it (a registry that cannot be
    reached shows only as a warning; the error then blames a missing plugin)."""
    output = re.sub(r"\x1b\[[0-9;]*m", "", output)
    lines = [line.strip() for line in output.splitlines()]
    errors = [line for line in lines if line.startswith("[ERROR]") and line != "[ERROR]"]
    message = errors[0] if errors else output.strip()[-500:]
    transfer = next((line for line in lines if line.startswith("[WARNING]") and _TRANSFER_FAILED.search(line)), None)
    return f"{message} (after: {transfer})" if transfer else message


# Batch mode, warnings and errors only.
_MAVEN_QUIET = ("-B", "--no-transfer-progress", "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn")
_TRANSFER_FAILED = re.compile(r"Could not transfer|transfer failed|Unknown host|Network is unreachable|timed out",
                              re.IGNORECASE)


def fetch_job_server(runner: str, beam_version: str | None = None, flink_version: str = DEFAULT_FLINK_VERSION,
                     timeout_s: float = FETCH_TIMEOUT_S, retry_missing: bool = False,
                     test_server: bool = True) -> tuple[Path, str | None]:
    """``runner``'s job-server jar for the SDK's release; where Maven does not serve it (and
    ``test_server``), the assembled test job server instead.

    Returns:
        (the jar, None) or (the test server's launcher jar, why the matching jar was not used).

    Raises:
        JarUnavailable: neither could be had (the message gives both reasons).
    """
    try:
        return fetch_jar(coordinates(runner, beam_version, flink_version), timeout_s, retry_missing), None
    except JarUnavailable as e:
        if not test_server:
            raise
        why = str(e)
    try:
        return assemble_test_job_server(runner, timeout_s, retry_missing), why
    except JarUnavailable as e:
        raise JarUnavailable(f"{why}; and the test job server: {e}") from None


def test_server_notice(runner: str, why: str) -> str:
    """What ``fetch`` says when it assembled a test job server instead of the matching jar."""
    server = _test_job_server(runner)
    return (f"the {server.engine.split()[0]} job server of Beam {apache_beam.__version__} (this SDK) could not be "
            f"fetched ({why}). Assembled instead a test job server from Beam {server.beam_version}'s runner "
            f"libraries and {server.engine}, from Maven ({cache_dir() / server.name}). A Beam {server.beam_version} "
            f"job server with the {apache_beam.__version__} SDK is not a pairing Beam supports: use it for local "
            f"runs and tests, not in production.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m audiotok.runners.jobservers", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="fetch a job-server jar into the cache; prints its path")
    fetch.add_argument("runner", choices=RUNNERS + ("prism",))
    fetch.add_argument("--beam-version", default=None, help=f"default: the installed SDK's ({apache_beam.__version__})")
    fetch.add_argument("--flink-version", default=DEFAULT_FLINK_VERSION)
    fetch.add_argument("--retry", action="store_true", help="try again even if it failed within the last day")
    fetch.add_argument("--no-test-server", action="store_true",
                       help=f"only the jar of the SDK's release; never assemble the Beam {TEST_BEAM_VERSION} test "
                            "job server in its place")
    args = parser.parse_args(argv)
    try:
        if args.runner == "prism":
            print(fetch_prism(args.beam_version, retry_missing=args.retry))
            return 0
        jar, why = fetch_job_server(args.runner, args.beam_version, args.flink_version, retry_missing=args.retry,
                                    test_server=not args.no_test_server)
    except JarUnavailable as e:
        print(f"jobservers: {e}", file=sys.stderr)
        return 1
    if why is not None:
        print(f"jobservers: {test_server_notice(args.runner, why)}", file=sys.stderr)
    print(jar)
    return 0


if __name__ == "__main__":
    sys.exit(main())
