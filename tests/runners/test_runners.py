"""Runner profiles, and the tokenize job on the runners this machine can run.

* Profiles -> Beam flags: defaults, user overrides, checks (no Beam run).
* The real job on the multi-process DirectRunner and on the PortableRunner against Beam's
  local job service with an external worker pool (whose workers get no pipeline options:
  the S3 endpoint reaches them through the pool's environment). Both write the same tokens
  as the in-process run.
* Dataflow as far as it goes offline: the job Beam would submit (``--dry_run``), with the
  GPU flags, the container and the ``--setup_file`` sdist; the Flex Template entry point;
  the template spec from ``gcloud ... --print-only``; the Cloud Scheduler request.
* Spark and Flink: the profiles' flags, and the job-server jars (fetched, or the test job
  server assembled) with a stand-in Maven; the job itself runs in ``test_spark_flink.py``.
"""

from __future__ import annotations

import json
import os
import re
import runpy
import shutil
import stat
import subprocess
import sys
import tarfile

import pytest

from emulators import (EXAMPLE_CORPUS, REPO_ROOT, GcsEmulator, MotoS3, apply_env, dataset_digest, local_reference,
                       upload_tree)
from audiotok.runners import jobservers, portable, profiles


# ------------------------------------------------------------------ profiles -> flags


def _flags(profile, *user):
    return profiles.parse_flags(profiles.beam_flags(profile, list(user)))


def test_default_profile_runs_in_process_without_prism():
    assert profiles.beam_flags("direct", []) == ["--runner=FnApiRunner", "--no_pipeline_type_check"]


@pytest.mark.parametrize("profile", ["direct", "direct-threads", "direct-multiprocess"])
def test_local_profiles_skip_construction_type_checks_unless_asked(profile):
    from apache_beam.options.pipeline_options import TypeOptions

    assert not profiles.pipeline_options(profile, []).view_as(TypeOptions).pipeline_type_check
    for flag in ("--pipeline_type_check", "--pipeline-type-check"):  # ours: Beam has only the negative flag
        flags = profiles.beam_flags(profile, [flag, "--direct_num_workers=3"])
        assert flags[-1] == "--direct_num_workers=3" and not any("type_check" in f for f in flags)
        assert profiles.pipeline_options(profile, [flag]).view_as(TypeOptions).pipeline_type_check
    assert profiles.pipeline_options("dataflow", ["--project=p", "--region=r", "--temp_location=gs://b/t"]
                                     ).view_as(TypeOptions).pipeline_type_check


def test_user_flags_win_in_either_spelling():
    flags = profiles.beam_flags("direct-multiprocess", ["--direct_num_workers", "4"])
    assert flags == ["--runner=FnApiRunner", "--direct_running_mode=multi_processing", "--no_pipeline_type_check",
                     "--direct_num_workers", "4"]
    assert _flags("spark", "--spark-master-url=local[4]")["spark_master_url"] == ["local[4]"]


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(ValueError, match="known: direct, direct-multiprocess, portable, dataflow"):
        profiles.pipeline_options("dataflw", [])


@pytest.mark.parametrize("profile, user, missing", [
    ("portable", [], "--job_endpoint"),
    ("dataflow", ["--project=p"], "--region, --temp_location"),
    ("dataflow-gpu", ["--project=p", "--region=r", "--temp_location=gs://b/t"], "--sdk_container_image"),
])
def test_profiles_name_the_flags_they_need(profile, user, missing):
    with pytest.raises(ValueError, match=missing):
        profiles.beam_flags(profile, user)


@pytest.mark.parametrize("flag", ["--s3_secret_access_key=abc", "--s3_access_key_id", "--azure_connection_string=x"])
def test_credential_flags_are_refused_without_echoing_them(flag):
    with pytest.raises(ValueError, match="standard chains") as e:
        profiles.beam_flags("direct", [flag, "AKIAEXAMPLE"] if "=" not in flag else [flag])
    assert "abc" not in str(e.value) and "AKIAEXAMPLE" not in str(e.value)


def test_dataflow_ships_the_source_package_or_runs_in_the_container():
    base = ["--project=p", "--region=r", "--temp_location=gs://b/t"]
    flags = _flags("dataflow", *base)
    assert flags["setup_file"] == [str(profiles.SOURCE_SETUP_FILE)]
    # The sdist brings the trainer side only: the job's pinned stack goes as the requirements file.
    assert flags["requirements_file"] == [str(profiles.SOURCE_REQUIREMENTS)]
    assert flags["requirements_cache"] == ["skip"]
    in_image = _flags("dataflow", *base, "--sdk_container_image=img")
    assert "setup_file" not in in_image and "requirements_file" not in in_image


def test_dataflow_gpu_flags_merge_with_the_users_list_entries():
    base = ["--project=p", "--region=r", "--temp_location=gs://b/t", "--sdk_container_image=img"]
    flags = _flags("dataflow-gpu", *base)
    assert flags["dataflow_service_options"] == [f"worker_accelerator={profiles.GPU_ACCELERATOR}"]
    assert "experiments" not in flags  # several SDK processes share one model per GPU
    assert flags["number_of_worker_harness_threads"] == ["2"]
    assert flags["machine_type"] == [profiles.GPU_MACHINE_TYPE]
    t4 = "worker_accelerator=type:nvidia-tesla-t4;count:1;install-nvidia-driver"
    flags = _flags("dataflow-gpu", *base, f"--dataflow_service_options={t4}", "--experiments=use_runner_v2",
                   "--worker_machine_type=n1-standard-8")
    assert flags["dataflow_service_options"] == [t4]  # the user's accelerator replaces ours
    assert flags["experiments"] == ["use_runner_v2"]
    assert flags["machine_type"] == ["n1-standard-8"]  # aliases count as the same flag


def test_spark_and_flink_default_to_local_masters_with_loopback_workers(tmp_path, monkeypatch):
    monkeypatch.setenv("AUDIOTOK_JAR_CACHE", str(tmp_path))  # nothing cached: Beam would download the jar
    spark, flink = _flags("spark"), _flags("flink")
    assert spark["spark_master_url"] == ["local[2]"] and spark["environment_type"] == ["LOOPBACK"]
    assert flink["flink_master"] == ["[local]"] and flink["parallelism"] == ["2"]
    assert spark["environment_cache_millis"] == flink["environment_cache_millis"] == ["60000"]
    assert "spark_job_server_jar" not in spark and "flink_job_server_jar" not in flink
    with pytest.raises(ValueError, match="environment_type"):
        profiles.beam_flags("spark", ["--spark_master_url=spark://cluster:7077"])
    remote = _flags("flink", "--flink_master=jm:8081", "--environment_type=EXTERNAL", "--environment_config=w:50000")
    assert remote["environment_type"] == ["EXTERNAL"] and "parallelism" not in remote


def test_profiles_use_the_sdks_jar_else_the_test_job_server_on_local_masters_only(tmp_path, monkeypatch):
    monkeypatch.setenv("AUDIOTOK_JAR_CACHE", str(tmp_path))
    test_jar = tmp_path / jobservers.TEST_JOB_SERVERS["spark"].name / jobservers.TEST_JOB_SERVERS["spark"].jar_name
    test_jar.parent.mkdir()
    test_jar.write_bytes(b"PK")
    assert _flags("spark")["spark_job_server_jar"] == [str(test_jar)]
    cluster = _flags("spark", "--spark_master_url=spark://m:7077", "--environment_type=DOCKER")
    assert "spark_job_server_jar" not in cluster  # a cluster never gets the Beam 2.56 scaffolding
    own = tmp_path / jobservers.coordinates("spark").file_name
    own.write_bytes(b"PK")
    assert _flags("spark")["spark_job_server_jar"] == [str(own)]
    assert _flags("spark", "--spark_master_url=spark://m:7077", "--environment_type=DOCKER")[
        "spark_job_server_jar"] == [str(own)]
    assert _flags("spark", "--spark_job_server_jar=/x.jar")["spark_job_server_jar"] == ["/x.jar"]


def test_job_server_jar_coordinates_follow_the_sdk_version():
    import apache_beam

    spark = jobservers.coordinates("spark")
    assert spark.gav == f"org.apache.beam:beam-runners-spark-3-job-server:{apache_beam.__version__}"
    assert jobservers.coordinates("flink", "2.77.0", "1.19").file_name == "beam-runners-flink-1.19-job-server-2.77.0.jar"
    with pytest.raises(ValueError, match="known: spark, flink"):
        jobservers.coordinates("storm")


# ------------------------------------------------------------------ the real job on local runners


def _run(input_pattern: str, output: str, profile: str, flags: list[str]) -> dict:
    from audiotok.pipelines import tokenize
    from audiotok.transforms.match import MatchConfig

    config = tokenize.JobConfig(output=output, match=MatchConfig(patterns=(input_pattern,)), overwrite=True)
    index, _, _ = tokenize.run(config, profiles.pipeline_options(profile, flags))
    return index


@pytest.mark.slow
def test_direct_multiprocess_writes_what_the_in_process_run_writes(tmp_path):
    _run(os.path.join(EXAMPLE_CORPUS, "**"), str(tmp_path / "out"), "direct-multiprocess", [])
    assert dataset_digest(str(tmp_path / "out")) == local_reference()

@pytest.mark.slow
def test_direct_threads_writes_what_the_in_process_run_writes(tmp_path):
    _run(os.path.join(EXAMPLE_CORPUS, "**"), str(tmp_path / "out"), "direct-threads", [])
    assert dataset_digest(str(tmp_path / "out")) == local_reference()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_portable_runner_with_an_external_worker_pool_bucket_to_bucket(monkeypatch):
    """Beam's local job service + worker pool, S3 in and out: the workers find the S3 server
    and the keys through the pool's environment, as they must (they get no options)."""
    with MotoS3() as s3:
        for k, v in s3.env.items():
            monkeypatch.setenv(k, v)
        s3.make_bucket("corpus")
        upload_tree(EXAMPLE_CORPUS, "s3://corpus/examples")
        with portable.local_portable(env=os.environ) as endpoints:
            _run("s3://corpus/examples/**", "s3://corpus/tokens", "portable", endpoints.flags())
        assert dataset_digest("s3://corpus/tokens") == local_reference()


@pytest.mark.slow
def test_the_launcher_reads_the_index_a_worker_process_published(monkeypatch):
    """On a portable runner the launcher lists the output folder, a worker process publishes the
    index, and the launcher then reads it: a listing cached in the launcher must not hide it."""
    from audiotok.transforms import dataset, storage

    with MotoS3() as s3:
        for k, v in s3.env.items():
            monkeypatch.setenv(k, v)
        s3.make_bucket("out")
        storage.write_bytes("s3://out/ds/state/state-v000001.json", b"{}")
        assert [url for url, _ in storage.list_folder("s3://out/ds")] == ["s3://out/ds/state"]  # cached here
        subprocess.run([sys.executable, "-c", "from audiotok.transforms import storage; "
                        "storage.write_bytes('s3://out/ds/index.json', b'{\"dataset_version\": 1}')"],
                       check=True, timeout=120)
        assert dataset.read_index("s3://out/ds") == {"dataset_version": 1}


# ------------------------------------------------------------------ Dataflow, offline


@pytest.fixture(scope="module")
def gcs():
    with GcsEmulator(buckets=("corpus", "tokens")) as server:
        with apply_env(server.env):
            upload_tree(os.path.join(EXAMPLE_CORPUS, "en", "a"), "gs://corpus/a")
        yield server


DATAFLOW_FLAGS = ["--project=audiotok-test", "--region=us-central1", "--temp_location=gs://tokens/tmp",
                  "--dry_run=True"]
IMAGE = "us-central1-docker.pkg.dev/audiotok-test/audiotok/audiotok:0.1.0"


def _dry_run_job(profile: str, flags: list[str]):
    """The job Beam would submit to Dataflow, and the worker environment it would ask for."""
    from apache_beam.portability.api import beam_runner_api_pb2
    from apache_beam.runners.dataflow.internal import apiclient

    from audiotok.pipelines import tokenize
    from audiotok.transforms.match import MatchConfig

    config = tokenize.JobConfig(output="gs://tokens/dataflow", match=MatchConfig(patterns=("gs://corpus/a/*",)))
    result = tokenize.launch(config, profiles.pipeline_options(profile, DATAFLOW_FLAGS + flags))
    job = result.job
    # What create_job would send, built offline (the staged pipeline URL is not used).
    environment = apiclient.Environment(packages=[], options=job.options, environment_version="8",
                                        proto_pipeline_staged_url="gs://tokens/tmp/pipeline.pb",
                                        proto_pipeline=job.proto_pipeline).proto
    (sdk_env,) = job.proto_pipeline.components.environments.values()
    staged = {}
    for dep in sdk_env.dependencies:
        name = beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(dep.role_payload).staged_name
        staged[name] = beam_runner_api_pb2.ArtifactFilePayload.FromString(dep.type_payload).path
    image = beam_runner_api_pb2.DockerPayload.FromString(sdk_env.payload).container_image
    return environment, staged, image


def _field(message, name: str):
    """A field of Dataflow's job message: snake_case in Beam's own client, camelCase in the
    apitools client of older Beam releases."""
    if hasattr(message, name):
        return getattr(message, name)
    return getattr(message, re.sub(r"_([a-z])", lambda m: m.group(1).upper(), name))


@pytest.mark.slow
def test_dataflow_gpu_job_asks_for_the_gpu_and_our_container(gcs, monkeypatch):
    for k, v in gcs.env.items():
        monkeypatch.setenv(k, v)
    environment, staged, image = _dry_run_job("dataflow-gpu", [f"--sdk_container_image={IMAGE}"])
    assert list(_field(environment, "service_options")) == [f"worker_accelerator={profiles.GPU_ACCELERATOR}"]
    assert "no_use_multiple_sdk_containers" not in _field(environment, "experiments")
    (pool,) = _field(environment, "worker_pools")
    assert _field(pool, "machine_type") == profiles.GPU_MACHINE_TYPE and _field(pool, "disk_size_gb") == 50
    assert [_field(i, "container_image") for i in _field(pool, "sdk_harness_container_images")] == [IMAGE]
    assert image == IMAGE
    assert "workflow.tar.gz" not in staged  # the package is in the image


@pytest.mark.slow
def test_dataflow_cpu_job_ships_our_package_with_setup_file(gcs, monkeypatch):
    """--setup_file packaging: Beam builds an sdist of this checkout for the workers; it holds
    every package and the Dataflow files."""
    for k, v in gcs.env.items():
        monkeypatch.setenv(k, v)
    environment, staged, image = _dry_run_job("dataflow", [])
    import apache_beam

    assert image.endswith(f"beam_python{sys.version_info.major}.{sys.version_info.minor}_sdk:{apache_beam.__version__}")
    with tarfile.open(staged["workflow.tar.gz"]) as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    assert {"setup.py", "pipelines/tokenize.py", "transforms/storage.py", "runners/profiles.py",
            "runners/dataflow/Dockerfile", "runners/dataflow/flex_main.py"} <= names
    # pip installs the sdist without extras: the job's stack reaches the workers as the staged
    # requirements file, which their boot installs.
    with open(staged["requirements.txt"], encoding="utf-8") as f:
        pins = {line.split("==")[0] for line in f if "==" in line and not line.startswith("#")}
    assert {"apache-beam[gcp]", "torch", "torchaudio", "soundfile", "av", "soxr", "gcsfs", "s3fs"} <= pins


@pytest.mark.slow
def test_flex_template_entry_point_submits_and_returns(gcs, monkeypatch):
    """What the Flex Template launcher runs, with the flags it passes; --dry_run stands in for
    the Dataflow API."""
    for k, v in gcs.env.items():
        monkeypatch.setenv(k, v)
    flex_main = runpy.run_path(os.path.join(REPO_ROOT, "runners", "dataflow", "flex_main.py"))
    code = flex_main["main"]([
        "--input=gs://corpus/a/*", "--output=gs://tokens/flex", "--tokenizer=logmel", "--profile=dataflow-gpu",
        f"--sdk_container_image={IMAGE}", "--staging_location=gs://tokens/staging", "--job_name=audiotok-refresh",
        *DATAFLOW_FLAGS])
    assert code == 0


def test_flex_template_metadata_names_real_flags():
    """Every template parameter is a flag of `audiotok tokenize` (the launcher passes them as
    --name=value)."""
    from audiotok.pipelines import options as opts

    with open(os.path.join(REPO_ROOT, "runners", "dataflow", "metadata.json"), encoding="utf-8") as f:
        metadata = json.load(f)
    from audiotok.runners.dataflow import flex_main

    names = [p["name"] for p in metadata["parameters"]]
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", n) for n in names), names
    samples = {"input": "gs://b/corpus/**", "manifest": "gs://b/m.jsonl", "output": "gs://b/tokens",
               "tokenizer": "logmel", "profile": "dataflow-gpu", "device": "cuda", "segmenter": "vad",
               "segment_s": "20", "batch_max_s": "120.5", "autocast": "bf16", "model_copies": "2",
               "torch_threads": "1", "max_failure_fraction": "0.25"}
    assert set(names) == set(samples), "give the new parameter a sample value here"
    for p in metadata["parameters"]:  # a value the template's regexes accept...
        assert all(re.fullmatch(r, samples[p["name"]]) for r in p.get("regexes", [])), p["name"]
    argv = flex_main.our_flags([f"--{n}={samples[n]}" for n in names] + ["--temp_location=gs://b/tmp"])
    assert argv[-1] == "--temp_location=gs://b/tmp"  # Dataflow's own options keep their names
    args, unknown = opts.parse(opts.TokenizeOptions, argv[:-1], prog="t")  # ...is one our parser takes
    assert unknown == []
    assert args.batch_max_s == 120.5 and args.torch_threads == 1 and args.segmenter == "vad"


def test_flex_template_metadata_is_written_from_the_flags():
    """metadata.json is generated (python -m audiotok.runners.dataflow.metadata --write ...): its
    help texts are the flags' (so the config fields'), and its checks their choices and types."""
    from audiotok.runners.dataflow import metadata

    with open(os.path.join(REPO_ROOT, "runners", "dataflow", "metadata.json"), encoding="utf-8") as f:
        assert f.read() == metadata.render(), "rerun python -m audiotok.runners.dataflow.metadata --write ..."
    by_name = {p["name"]: p for p in metadata.metadata()["parameters"]}
    assert by_name["segmenter"]["regexes"] == ["^(fixed|vad|energy)$"]
    assert "unset: 240 where the tokenizers run on a GPU" in by_name["batch_max_s"]["helpText"]
    assert "isOptional" not in by_name["output"]


@pytest.mark.skipif(shutil.which("gcloud") is None, reason="gcloud is not installed")
def test_gcloud_builds_the_flex_template_spec(tmp_path):
    env = {**os.environ, "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"), "PROJECT": "audiotok-test",
           "REGION": "us-central1", "BUCKET": "gs://tokens", "PRINT_ONLY": "1"}
    done = subprocess.run(["bash", os.path.join(REPO_ROOT, "runners", "dataflow", "template.sh"), "template"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    spec = json.loads(done.stdout.split("\n", 1)[1])  # gcloud prints a YAML block scalar: "|-" then JSON
    assert spec["image"] == IMAGE
    assert spec["sdkInfo"]["language"] == "PYTHON"
    assert {p["name"] for p in spec["metadata"]["parameters"]} >= {"input", "output", "profile"}


def test_scheduler_request_launches_the_template(tmp_path):
    """template.sh schedule, with a stand-in gcloud that records its arguments: the Cloud
    Scheduler job POSTs a flexTemplates:launch request naming the template and parameters."""
    fake = tmp_path / "bin" / "gcloud"
    fake.parent.mkdir()
    fake.write_text('#!/usr/bin/env python3\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}", "PROJECT": "audiotok-test",
           "REGION": "us-central1", "BUCKET": "gs://tokens", "PROFILE": "dataflow-gpu", "TOKENIZER": "logmel,mfcc",
           "SCHEDULER_SA": "launcher@audiotok-test.iam.gserviceaccount.com"}
    done = subprocess.run(["bash", os.path.join(REPO_ROOT, "runners", "dataflow", "template.sh"), "schedule",
                           "gs://corpus/**", "gs://tokens/ds", "0 3 * * *"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    argv = json.loads(done.stdout)
    opts = dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)
    assert argv[:4] == ["scheduler", "jobs", "create", "http"]
    assert opts["uri"] == ("https://dataflow.googleapis.com/v1b3/projects/audiotok-test/locations/us-central1/"
                           "flexTemplates:launch")
    launch = json.loads(opts["message-body"])["launchParameter"]
    assert launch["containerSpecGcsPath"] == "gs://tokens/templates/audiotok-tokenize.json"
    assert launch["parameters"] == {"input": "gs://corpus/**", "output": "gs://tokens/ds", "tokenizer": "logmel,mfcc",
                                    "profile": "dataflow-gpu", "sdk_container_image": IMAGE}


# ------------------------------------------------------------------ Prism


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_prism_runner_writes_what_the_in_process_run_writes(tmp_path):
    """Beam's Prism runner (Go), built with `go install` through the Go module proxy into
    ~/.cache/audiotok/jars. Skipped, with the reason, where Go or the module is unavailable."""
    try:
        binary = jobservers.fetch_prism(timeout_s=600)
    except jobservers.JarUnavailable as e:
        pytest.skip(str(e))
    assert profiles.pipeline_options("prism", []).get_all_options()["prism_location"] == str(binary)
    _run(os.path.join(EXAMPLE_CORPUS, "**"), str(tmp_path / "out"), "prism", [])
    assert dataset_digest(str(tmp_path / "out")) == local_reference()


def test_a_failed_prism_build_is_reported_and_remembered(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_go = bin_dir / "go"
    fake_go.write_text("#!/bin/sh\necho 'go: downloading x'\necho 'module lookup disabled by GOPROXY=off' >&2\n"
                       "echo called >> \"$(dirname \"$0\")/calls\"\nexit 1\n")
    fake_go.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("AUDIOTOK_JAR_CACHE", str(tmp_path / "cache"))
    with pytest.raises(jobservers.JarUnavailable, match="GOPROXY=off"):
        jobservers.fetch_prism("2.77.0")
    with pytest.raises(jobservers.JarUnavailable, match="not served the last time"):
        jobservers.fetch_prism("2.77.0")  # remembered: go is not run again
    assert (bin_dir / "calls").read_text().count("called") == 1
    assert jobservers.cached_prism("2.77.0") is None
    assert "prism_location" not in profiles.pipeline_options("prism", []).get_all_options(drop_default=True)


def test_local_runs_refuse_cuda_up_front_when_there_is_none(tmp_path, monkeypatch):
    import torch

    from audiotok.pipelines import tokenize
    from audiotok.transforms.match import MatchConfig
    from audiotok.transforms.tokenize import TokenizeConfig

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = tokenize.JobConfig(output=str(tmp_path / "out"), match=MatchConfig(patterns=(EXAMPLE_CORPUS,)),
                                tokenize=TokenizeConfig(device="cuda"))
    for profile in ("direct", "direct-multiprocess", "prism"):
        with pytest.raises(SystemExit, match="torch sees no CUDA device"):
            tokenize.launch(config, profiles.pipeline_options(profile, []))
    assert not (tmp_path / "out").exists()
    remote = profiles.pipeline_options("dataflow", ["--project=p", "--region=r", "--temp_location=gs://b/t"])
    assert not profiles.workers_are_local(remote)  # the workers there may well have a GPU
    assert profiles.workers_are_local(profiles.pipeline_options("portable", ["--job_endpoint=localhost:1"]))


def test_the_dataflow_image_copies_what_exists_and_installs_the_model_libraries():
    """The image cannot be built here (no Docker daemon): check what it copies and installs."""
    dockerfile = os.path.join(REPO_ROOT, "runners", "dataflow", "Dockerfile")
    lines = [line.split() for line in open(dockerfile, encoding="utf-8") if line.startswith("COPY ")]
    sources = [src for words in lines if not words[1].startswith("--from") for src in words[1:-1]]
    assert sources and all(os.path.exists(os.path.join(REPO_ROOT, src)) for src in sources), sources
    text = open(dockerfile, encoding="utf-8").read()
    assert "pip install -r requirements.txt" in text
    pins = open(os.path.join(REPO_ROOT, "requirements.txt"), encoding="utf-8").read()
    for package in ("apache-beam[gcp]==", "torch==", "transformers==", "snac==", "silero-vad=="):
        assert package in pins, package


@pytest.mark.parametrize("profile", ["direct-threads", "direct-multiprocess"])
def test_local_multi_worker_profiles_take_one_worker_per_usable_core(profile, monkeypatch):
    monkeypatch.setattr(profiles, "usable_cores", lambda: 5)
    assert _flags(profile)["direct_num_workers"] == ["5"]
    assert _flags(profile, "--direct_num_workers=3")["direct_num_workers"] == ["3"]


def test_usable_cores_are_the_cores_this_process_may_run_on():
    assert profiles.usable_cores() == len(os.sched_getaffinity(0))
