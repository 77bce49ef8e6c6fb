"""The package as a wheel, installed into fresh virtualenvs: what Dataflow's ``--setup_file`` (and
the Dockerfile's ``pip install``) do on workers, and what ``pip install audiotok`` does in a
training environment.

How the environments are made, and why:

* ``pip wheel --no-deps --no-build-isolation`` builds the wheel from a copy of what
  ``setup.py`` packages, with the setuptools already installed (no download).
* ``python -m venv --without-pip`` makes a new, empty environment; wheels are installed into it
  with this environment's pip (``pip --python NEW``).
* Dependencies are not downloaded (the tests run offline): a ``.pth`` file in the new
  environment adds folders that hold them. Lines of a ``.pth`` file only add folders to
  ``sys.path``: the ``.pth`` files inside them are not run, so an editable install of the
  checkout in this environment stays invisible, and the new site-packages comes first.
  - The job test appends this environment's whole site-packages (torch, Beam, ... ~5 GB).
  - The trainer test exposes only the distributions that ``install_requires`` needs, through a
    folder of links, and installs the wheel *with* dependency resolution and ``--no-index``:
    pip finds them installed, and would fail if the wheel asked for anything else (Beam, torch).
* Commands run from an empty folder, without ``PYTHONPATH``: the source tree is not
  importable, so a module missing from the wheel fails. The tests also check where the
  packages were imported from.
"""

from __future__ import annotations

import glob
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from audiotok.pipelines import cli
from emulators import EXAMPLE_CORPUS, REPO_ROOT, dataset_digest, local_reference


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{command[:4]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}


def _build_wheel(tmp_path) -> str:
    """The audiotok wheel, built from a copy of what setup.py packages: no build/ left in the
    checkout (stale files there would end up in later wheels), and the wheel cannot pick up
    anything else."""
    dist, src = tmp_path / "dist", tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "README.md"):
        shutil.copy2(os.path.join(REPO_ROOT, name), src / name)
    for package in ("audiotok", "pipelines", "transforms", "runners"):
        shutil.copytree(os.path.join(REPO_ROOT, package), src / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q", "-w", str(dist)],
         cwd=tmp_path, env=_clean_env(), timeout=300)
    (wheel,) = glob.glob(str(dist / "audiotok-*.whl"))
    return wheel


def _new_venv(path) -> tuple[str, str]:
    """A new, empty virtualenv: (its python, its site-packages)."""
    _run([sys.executable, "-m", "venv", "--without-pip", str(path)], timeout=120)
    python = str(path / "bin" / "python")
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                env=_clean_env()).stdout.strip()
    return python, site


def _pip_into(python: str, *args: str) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", *args], env=_clean_env(),
                timeout=300)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_wheel_in_a_fresh_virtualenv_runs_the_job(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    env = _clean_env()
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"audiotok/__init__.py", "audiotok/pipelines/cli.py", "audiotok/transforms/storage.py",
            "audiotok/runners/profiles.py", "audiotok/runners/dataflow/Dockerfile",
            "audiotok/runners/dataflow/metadata.json", "audiotok/runners/dataflow/flex_main.py"} <= names
    # One import root: nothing but audiotok (and its dist-info) at the top level of site-packages.
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"audiotok"}

    venv = tmp_path / "venv"
    new_python, new_site = _new_venv(venv)
    _pip_into(new_python, "--no-deps", "--no-index", wheel)
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    with open(os.path.join(new_site, "_audiotok_test_dependencies.pth"), "w", encoding="utf-8") as f:
        f.write("".join(p + "\n" for p in sorted(ours)))

    where = _run([new_python, "-c", "from audiotok import pipelines, transforms, runners; "
                  "print('\\n'.join(m.__path__[0] for m in (pipelines, transforms, runners)))"],
                 cwd=work, env=env).stdout.split()
    assert all(p.startswith(new_site) for p in where), where

    output = str(tmp_path / "out")
    _run([str(venv / "bin" / "audiotok"), "tokenize", "--input", os.path.join(EXAMPLE_CORPUS, "**"),
          "--output", output, "--tokenizer", "logmel"], cwd=work, env=env, timeout=400)
    assert dataset_digest(output) == local_reference()


# ------------------------------------------------------------------ the trainer side

# A torch that is not the pipeline's, as a training environment has: pip must leave it alone. A
# stand-in distribution of a few KB named torch (a real second torch is gigabytes), with the
# surface webdataset reaches for: ``Tensor``, ``utils.data`` (the IterableDataset its pipelines
# subclass, the DataLoader worker info) and ``distributed``.
STANDIN_TORCH_VERSION = "2.3.1+trainer"
STANDIN_TORCH = {
    "torch/__init__.py": f"__version__ = {STANDIN_TORCH_VERSION!r}\n\n\nclass Tensor:\n    pass\n",
    "torch/utils/__init__.py": "",
    "torch/utils/data/__init__.py": ("class IterableDataset:\n    pass\n\n\nclass DataLoader:\n    pass\n\n\n"
                                     "def get_worker_info():\n    return None\n"),
    "torch/distributed/__init__.py": "def is_available():\n    return False\n\n\ndef is_initialized():\n    return False\n",
    "setup.py": ("from setuptools import setup\n"
                 f"setup(name='torch', version={STANDIN_TORCH_VERSION!r}, "
                 "packages=['torch', 'torch.utils', 'torch.utils.data', 'torch.distributed'])\n"),
}

# Run by this environment and by the trainer's: what reading the dataset gives, and what came with it.
READ_DATASET = r"""
import hashlib, json, sys, time
start = time.perf_counter()
from audiotok.transforms import reader
import_s = time.perf_counter() - start
after_import = sorted(m for m in ("apache_beam", "torch", "torchaudio", "soundfile", "av") if m in sys.modules)
from audiotok.transforms import lm
out = sys.argv[1]
samples = {s.key: {name: [list(a.shape), str(a.dtype), hashlib.sha256(a.tobytes()).hexdigest()]
                   for name, a in s.streams.items()} for s in reader.sample_dataset(out)}
rows = list(reader.lm_dataset(out, lm.SequenceConfig(("mfcc-kmeans",)), context_len=64))
tokens = hashlib.sha256(b"".join(r["tokens"].tobytes() + r["targets"].tobytes() for r in rows)).hexdigest()
print(json.dumps({"import_s": import_s, "after_import": after_import, "samples": samples, "rows": len(rows),
                  "tokens": tokens, "beam_after_reading": "apache_beam" in sys.modules,
                  "reader_from": reader.__file__}))
"""


def _requirements(distribution_requires: list[str] | None) -> list[str]:
    """Distribution names a ``Requires-Dist`` list asks for, extras left out."""
    names = []
    for entry in distribution_requires or []:
        requirement, _, marker = entry.partition(";")
        if "extra" not in marker:
            names.append(re.match(r"\s*([A-Za-z0-9._-]+)", requirement).group(1))
    return names


def _installed_closure(requires: list[str]) -> dict[str, importlib.metadata.Distribution]:
    """The installed distributions that ``requires`` asks for, and theirs, transitively."""
    found: dict[str, importlib.metadata.Distribution] = {}
    todo = _requirements(requires)
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in found:
            continue
        try:
            found[name] = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # a marker (e.g. an older Python) that does not apply here; pip would say otherwise
        todo += _requirements(found[name].requires)
    return found


def _link_distributions(distributions, folder) -> None:
    """A folder holding (links to) these installed distributions and nothing else."""
    folder.mkdir()
    for dist in distributions:
        for top in {f.parts[0] for f in dist.files or () if f.parts[0] != ".."}:
            if not (folder / top).exists():
                (folder / top).symlink_to(dist.locate_file(top))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_training_environment_installs_the_trainer_side_and_keeps_its_torch(tmp_path):
    """``pip install audiotok`` into an environment that has its own torch: the torch stays, no
    Beam comes, the reader imports in under 2 s without the job's stack, and it reads a dataset
    the pipeline wrote as this environment reads it; the job commands answer with the install
    hint."""
    from dataset_fixtures import example_run

    work = tmp_path / "work"
    work.mkdir()
    env = _clean_env()
    wheel = _build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as z:
        (metadata,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        requires = [line.split(":", 1)[1].strip() for line in z.read(metadata).decode().splitlines()
                    if line.startswith("Requires-Dist:")]
    dependencies = _installed_closure(requires)
    assert {"numpy", "webdataset", "fsspec", "safetensors"} <= dependencies.keys()
    assert not {"torch", "torchaudio", "apache-beam"} & dependencies.keys(), sorted(dependencies)

    torch_src = tmp_path / "torch-src"
    for path, text in STANDIN_TORCH.items():
        (torch_src / path).parent.mkdir(parents=True, exist_ok=True)
        (torch_src / path).write_text(text, encoding="utf-8")
    _run([sys.executable, "-m", "pip", "wheel", str(torch_src), "--no-deps", "--no-build-isolation", "-q", "-w",
          str(tmp_path / "torch-dist")], cwd=tmp_path, env=env, timeout=300)
    (torch_wheel,) = glob.glob(str(tmp_path / "torch-dist" / "torch-*.whl"))

    venv = tmp_path / "trainer"
    python, site = _new_venv(venv)
    _pip_into(python, "--no-deps", "--no-index", torch_wheel)  # the trainer's own torch
    _link_distributions(dependencies.values(), tmp_path / "deps")
    (Path(site) / "_trainer_dependencies.pth").write_text(str(tmp_path / "deps") + "\n", encoding="utf-8")
    # With dependency resolution and no index: anything the wheel asked for beyond what is there
    # (Beam, a torch pin) would fail the install.
    _pip_into(python, "--no-index", wheel)

    versions = _run([python, "-c", "import importlib.metadata as m, json; print(json.dumps("
                     "{d.metadata['Name']: d.version for d in m.distributions()}))"], cwd=work, env=env).stdout
    versions = json.loads(versions)
    assert versions["torch"] == STANDIN_TORCH_VERSION
    assert not {"apache-beam", "apache_beam", "torchaudio"} & versions.keys()

    output = example_run()
    theirs = json.loads(_run([python, "-c", READ_DATASET, output], cwd=work, env=env, timeout=120).stdout)
    ours = json.loads(_run([sys.executable, "-c", READ_DATASET, output], cwd=work, env=env, timeout=300).stdout)
    assert theirs["reader_from"].startswith(site), theirs["reader_from"]
    assert theirs["after_import"] == [] and not theirs["beam_after_reading"]
    assert theirs["import_s"] < 2.0, theirs["import_s"]
    assert theirs["samples"] and theirs["samples"] == ours["samples"]
    assert theirs["rows"] > 0 and (theirs["rows"], theirs["tokens"]) == (ours["rows"], ours["tokens"])

    audiotok = str(venv / "bin" / "audiotok")
    done = subprocess.run([audiotok, "tokenize", "--input", "x", "--output", "y"], capture_output=True, text=True,
                          cwd=work, env=env, timeout=120)
    # Every distribution of the pipeline extra but the trainer's torch is missing, and named.
    installed = {re.sub(r"[-_.]+", "-", name).lower() for name in versions}
    missing = cli.missing_for_extra("pipeline", requires,
                                    installed=lambda name: re.sub(r"[-_.]+", "-", name).lower() in installed)
    assert {"apache-beam", "torchaudio"} <= set(missing) and "torch" not in missing
    assert done.returncode == 1 and done.stderr.strip().splitlines() == [
        f"audiotok tokenize needs the pipeline extra (missing: {', '.join(missing)}): "
        "pip install 'audiotok[pipeline]'"], done.stderr
    _run([audiotok, "verify", output], cwd=work, env=env, timeout=120)
    _run([audiotok, "inspect", output], cwd=work, env=env, timeout=120)
