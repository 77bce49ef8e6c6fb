"""Named runner profiles -> Beam pipeline options: the one place that knows how each runner is
launched.

A profile supplies defaults and checks what its runner needs; a flag the user gives wins
over the profile's default (for list flags such as ``--experiments`` and
``--dataflow_service_options`` the user's entry replaces the profile's entry with the same
key, and the others stay).

* ``direct`` (default): in this process (FnApiRunner; skips the DirectRunner's Prism download).
* ``direct-multiprocess``: one local worker process per usable core (``--direct_num_workers``
  overrides): the way to use every core of one machine; each worker process starts, imports
  Beam and torch and loads the tokenizer, a fixed cost a corpus of hours amortizes.
* ``direct-threads``: bundles on one thread per usable core of this process
  (``--direct_num_workers``), each thread with its own decoder processes; no worker start-up and
  no data plane between processes, but the threads share the interpreter's lock for the Python
  parts of the work, which caps their gain.
* ``portable``: a Beam job service at ``--job_endpoint`` (``python -m audiotok.runners.portable``
  starts one); LOOPBACK workers unless ``--environment_type`` says otherwise.
* ``dataflow``: Google Cloud Dataflow; needs ``--project``, ``--region``, ``--temp_location``;
  ships our package with ``--setup_file`` and the pinned job stack with ``--requirements_file``
  (source checkout), or runs in ``--sdk_container_image``.
* ``dataflow-gpu``: ``dataflow`` with one NVIDIA L4 per worker; needs the CUDA container of
  ``runners/dataflow/Dockerfile``.
* ``spark``: Beam's Spark job server (its jar from ``audiotok.runners.jobservers``' cache, or downloaded
  by Beam; with a local master, the assembled test job server when the SDK's jar is not cached);
  ``local[2]`` with LOOPBACK workers unless ``--spark_master_url``.
* ``flink``: Beam's Flink job server, the same way; ``[local]`` with 2 parallel tasks and LOOPBACK
  workers unless ``--flink_master``.
* ``prism``: Beam's Prism runner, a portable runner in Go (its binary from
  ``audiotok.runners.jobservers``' cache, built with ``go install``, or downloaded by Beam).

Credentials are never flags: Beam's ``--s3_secret_access_key`` and friends are refused
(pipeline options are logged and shown in job UIs); the standard chains supply them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Callable

from apache_beam.options.pipeline_options import PipelineOptions

from audiotok.runners import jobservers

logger = logging.getLogger(__name__)

# Beam flags whose values are lists; our defaults merge with the user's entry by entry.
LIST_FLAGS = frozenset({"experiments", "dataflow_service_options"})
# Beam flags that carry secrets.
REFUSED_FLAGS = frozenset({"s3_access_key_id", "s3_secret_access_key", "s3_session_token", "azure_connection_string"})
# The aliases Beam accepts for the flags profiles set, by their canonical name.
_ALIASES = {"worker_machine_type": "machine_type", "experiment": "experiments",
            "dataflow_service_option": "dataflow_service_options"}

# A source checkout's setup.py, which --setup_file packages for Dataflow workers, and the pinned
# stack of the job that goes with it.
SOURCE_SETUP_FILE = Path(__file__).resolve().parents[1] / "setup.py"
SOURCE_REQUIREMENTS = SOURCE_SETUP_FILE.parent / "requirements.txt"

GPU_MACHINE_TYPE = "g2-standard-8"

SPARK_LOCAL_MASTER = "local[2]"
FLINK_LOCAL_MASTER = "[local]"
# Parallel tasks of a local Spark or Flink master.
LOCAL_PARALLELISM = 2
# How long Spark and Flink keep an idle SDK worker for the job's next task. Beam's default, 0,
# starts a fresh worker for every task: on a cluster each one imports torch and loads the
# tokenizers' models again.
ENVIRONMENT_CACHE_MS = 60_000
GPU_ACCELERATOR = "type:nvidia-l4;count:1;install-nvidia-driver"


Flags = dict[str, list[str]]


@dataclasses.dataclass(frozen=True)
class Profile:
    """How one runner is launched.

    Attributes:
        name: what ``--profile`` takes.
        summary: one line for help texts.
        defaults: Beam flags (``--name=value``) applied unless the user gives the same flag.
        required: flag names the user must give.
        derive: more defaults that depend on the user's flags; may raise ValueError.
    """

    name: str
    summary: str
    defaults: tuple[str, ...]
    required: tuple[str, ...] = ()
    derive: Callable[[Flags], tuple[str, ...]] | None = None

    def flags(self, user_flags: list[str]) -> list[str]:
        """The Beam flags to run with: our defaults the user did not override, then theirs."""
        given = parse_flags(user_flags)
        refused = sorted(REFUSED_FLAGS & given.keys())
        if refused:
            raise ValueError(
                f"refusing --{', --'.join(refused)}: credentials are not passed as flags (pipeline options are "
                "logged and shown in job UIs); use the standard chains: AWS_PROFILE or "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in the workers' environment, an instance role, ADC for GCS")
        missing = [name for name in self.required if not any(given.get(name, []))]
        if missing:
            raise ValueError(f"profile {self.name!r} needs --{', --'.join(missing)}")
        defaults = list(self.defaults) + list(self.derive(given) if self.derive else ())
        user_flags = list(user_flags)
        if TYPE_CHECK_FLAG in given:  # ours, not Beam's: it only turns our default off
            defaults = [f for f in defaults if f != "--no_" + TYPE_CHECK_FLAG]
            user_flags = [f for f in user_flags
                          if not (f.startswith("--") and set(parse_flags([f])) == {TYPE_CHECK_FLAG})]
        return [f for f in defaults if not _overridden(f, given)] + user_flags


def parse_flags(flags: list[str]) -> Flags:
    """``--name=value`` / ``--name value`` / ``--switch`` -> {canonical name: [values]}."""
    out: Flags = {}
    i = 0
    while i < len(flags):
        flag = flags[i]
        i += 1
        if not flag.startswith("--"):
            continue
        name, eq, value = flag[2:].partition("=")
        if not eq and i < len(flags) and not flags[i].startswith("--"):
            value = flags[i]
            i += 1
        name = name.replace("-", "_")
        out.setdefault(_ALIASES.get(name, name), []).append(value)
    return out


def _entry_key(value: str) -> str:
    # worker_accelerator=type:...  -> worker_accelerator; no_use_multiple_sdk_containers -> itself
    return value.split("=", 1)[0]


def _overridden(default: str, given: Flags) -> bool:
    (name, values), = parse_flags([default]).items()
    if name not in given:
        return False
    if name not in LIST_FLAGS:
        return True
    user_keys = {_entry_key(v) for entry in given[name] for v in entry.split(",")}
    return all(_entry_key(v) in user_keys for v in values[0].split(","))


# ------------------------------------------------------------------ derived defaults


def _dataflow_packaging(given: Flags) -> tuple[str, ...]:
    if any(given.get("setup_file", [])) or any(given.get("sdk_container_image", [])):
        return ()
    if SOURCE_SETUP_FILE.is_file():
        # The sdist of --setup_file brings only the trainer-side dependencies (pip installs no
        # extras from it): the job's pinned stack goes as the requirements file, which the workers
        # install from PyPI (skip: no local download of every package to stage it).
        return (f"--setup_file={SOURCE_SETUP_FILE}", f"--requirements_file={SOURCE_REQUIREMENTS}",
                "--requirements_cache=skip")
    raise ValueError(
        "profile 'dataflow' needs our package on the workers: give --sdk_container_image=IMAGE (built from "
        "runners/dataflow/Dockerfile) or --setup_file=PATH/TO/audiotok/setup.py")


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, where the platform has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def _one_worker_per_core(given: Flags) -> tuple[str, ...]:
    return () if "direct_num_workers" in given else (f"--direct_num_workers={usable_cores()}",)


def _prism_defaults(given: Flags) -> tuple[str, ...]:
    if "prism_location" in given:
        return ()
    binary = jobservers.cached_prism()
    return (f"--prism_location={binary}",) if binary else ()


def _spark_defaults(given: Flags) -> tuple[str, ...]:
    master = (given.get("spark_master_url") or [SPARK_LOCAL_MASTER])[-1]
    local = master.startswith("local")
    return _workers("spark", master, local, given) + _job_server_jar("spark", "spark_job_server_jar", local, given)


def _flink_defaults(given: Flags) -> tuple[str, ...]:
    master = (given.get("flink_master") or [FLINK_LOCAL_MASTER])[-1]
    local = master in ("[local]", "[auto]")
    out = _workers("flink", master, local, given)
    if local:
        out += (f"--parallelism={LOCAL_PARALLELISM}",)  # Flink's local default is 1: use both cores
    version = (given.get("flink_version") or [jobservers.DEFAULT_FLINK_VERSION])[-1]
    return out + _job_server_jar("flink", "flink_job_server_jar", local, given, flink_version=version)


def _workers(runner: str, master: str, local: bool, given: Flags) -> tuple[str, ...]:
    if local:
        return ("--environment_type=LOOPBACK",)  # workers in this process: nothing to ship
    if "environment_type" not in given:
        raise ValueError(
            f"profile {runner!r} on {master}: give --environment_type=DOCKER --environment_config=IMAGE (an image "
            "with audiotok installed, e.g. from runners/dataflow/Dockerfile) or --environment_type=EXTERNAL "
            "--environment_config=HOST:PORT (a worker pool on each worker machine)")
    return ()


def _job_server_jar(runner: str, flag: str, local: bool, given: Flags, **coords) -> tuple[str, ...]:
    """The cached job-server jar: the SDK's own; for a local master, else the test job server."""
    if flag in given:
        return ()
    found = jobservers.cached_job_server(runner, **coords)
    if found is None:
        return ()  # Beam downloads the SDK's jar itself
    jar, is_test_server = found
    if is_test_server and not local:
        return ()  # a cluster gets the SDK's release, never the test scaffolding
    if is_test_server:
        logger.warning("profile %r: using the test job server %s (Beam %s libraries; not a pairing Beam supports)",
                       runner, jar, jobservers.TEST_BEAM_VERSION)
    return (f"--{flag}={jar}",)


_DATAFLOW = ("--runner=DataflowRunner",)

# What --profile is when not given.
DEFAULT_PROFILE = "direct"

# Local runs build the job on every run, and its wall time is theirs: Beam's construction-time
# type checks (and the inference of element types they drive, which picks typed coders) cost
# ~0.3 s of a run, for a pipeline whose types our tests check. ``--pipeline_type_check`` (a flag
# of ours: Beam has only the negative one) brings them back.
TYPE_CHECK_FLAG = "pipeline_type_check"
_LOCAL_BUILD = ("--no_" + TYPE_CHECK_FLAG,)

PROFILES: dict[str, Profile] = {p.name: p for p in (
    Profile("direct", "in this process (default)", ("--runner=FnApiRunner",) + _LOCAL_BUILD),
    Profile("direct-multiprocess", "one local worker process per core (the way to use all cores of one machine)",
            ("--runner=FnApiRunner", "--direct_running_mode=multi_processing") + _LOCAL_BUILD,
            derive=_one_worker_per_core),
    Profile("portable", "a Beam job service at --job_endpoint (python -m audiotok.runners.portable starts one)",
            ("--runner=PortableRunner", "--environment_type=LOOPBACK"), required=("job_endpoint",)),
    Profile("dataflow", "Google Cloud Dataflow (--project, --region, --temp_location)",
            _DATAFLOW, required=("project", "region", "temp_location"), derive=_dataflow_packaging),
    Profile("dataflow-gpu", "Dataflow with one NVIDIA L4 per worker (--sdk_container_image: a CUDA image)",
            _DATAFLOW + (
                f"--machine_type={GPU_MACHINE_TYPE}",
                f"--dataflow_service_options=worker_accelerator={GPU_ACCELERATOR}",
                # Dataflow's one SDK process per vCPU decode in parallel and share one model per
                # GPU (TokenizerModelHandler); two harness threads each bound the batch buffers.
                "--number_of_worker_harness_threads=2",
                # The CUDA image is ~10 GB unpacked; Dataflow's default disk with Shuffle is 25 GB.
                "--disk_size_gb=50"),
            required=("project", "region", "temp_location", "sdk_container_image")),
    Profile("spark", f"Beam's Spark job server, {SPARK_LOCAL_MASTER} unless --spark_master_url",
            ("--runner=SparkRunner", f"--spark_master_url={SPARK_LOCAL_MASTER}",
             f"--environment_cache_millis={ENVIRONMENT_CACHE_MS}"), derive=_spark_defaults),
    Profile("flink", f"Beam's Flink job server, {FLINK_LOCAL_MASTER} unless --flink_master",
            ("--runner=FlinkRunner", f"--flink_master={FLINK_LOCAL_MASTER}",
             f"--environment_cache_millis={ENVIRONMENT_CACHE_MS}"), derive=_flink_defaults),
    Profile("prism", "Beam's Prism runner (Go, portable), workers in this process",
            ("--runner=PrismRunner",), derive=_prism_defaults),
    Profile("direct-threads", "bundles on one thread per core of this process, each with its decoder processes",
            ("--runner=FnApiRunner", "--direct_running_mode=multi_threading") + _LOCAL_BUILD,
            derive=_one_worker_per_core),
)}


def get(name: str) -> Profile:
    """The profile called ``name``; ValueError listing the known ones otherwise."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}")
    return PROFILES[name]


def help_text() -> str:
    """One line per profile, for ``--profile``'s help."""
    return "; ".join(f"{p.name}: {p.summary}" for p in PROFILES.values())


def beam_flags(profile: str, user_flags: list[str]) -> list[str]:
    """The profile's flags that the user did not give, followed by the user's flags."""
    return get(profile).flags(list(user_flags))


def pipeline_options(profile: str, user_flags: list[str]) -> PipelineOptions:
    """Beam pipeline options for ``profile`` plus ``user_flags``.

    Raises:
        ValueError: an unknown profile, a flag the profile needs, or a credential flag.
    """
    return PipelineOptions(beam_flags(profile, user_flags))



# Runners whose SDK workers run in the launching machine's processes.
_LOCAL_RUNNERS = frozenset({"DirectRunner", "FnApiRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner",
                            "PrismRunner"})


def workers_are_local(options: PipelineOptions) -> bool:
    """Whether the job's SDK workers run on this machine (in-process and LOOPBACK runners)."""
    flags = options.get_all_options(drop_default=False)
    runner = flags.get("runner") or "DirectRunner"
    runner = runner if isinstance(runner, str) else type(runner).__name__
    return runner.rsplit(".", 1)[-1] in _LOCAL_RUNNERS or flags.get("environment_type") == "LOOPBACK"
