"""The package as a wheel, installed into a fresh virtualenv, runs the job: what Dataflow's
``--setup_file`` (and the Dockerfile's ``pip install``) do on workers.

How the environment is made, and why:

* ``pip wheel --no-deps --no-build-isolation`` builds the wheel from a copy of what
  ``setup.py`` packages, with the setuptools already installed (no download).
* ``python -m venv --without-pip`` makes a new, empty environment, and the wheel is installed
  into it with this environment's pip (``pip --python NEW``): the new environment holds our
  packages from the wheel and nothing else.
* Only then a ``.pth`` file in the new environment appends this environment's site-packages
  to its path, so the dependencies (torch, Beam, ... ~5 GB) need not be installed a second
  time. Lines of a ``.pth`` file only add folders to ``sys.path``: the ``.pth`` files inside
  them are not run, so an editable install of the checkout in this environment stays
  invisible, and the new site-packages comes first on the path.
* ``audiotok tokenize`` (the wheel's console script) runs from an empty folder, without
  ``PYTHONPATH``: the source tree is not importable, so a module missing from the wheel fails
  the run. The test also checks where the packages were imported from.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

from emulators import EXAMPLE_CORPUS, REPO_ROOT, dataset_digest, local_reference


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{command[:4]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_wheel_in_a_fresh_virtualenv_runs_the_job(tmp_path):
    dist, venv, work = tmp_path / "dist", tmp_path / "venv", tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}

    # A copy of what setup.py packages: no build/ left in the checkout (stale files there would
    # end up in later wheels), and the wheel cannot pick up anything else.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "README.md"):
        shutil.copy2(os.path.join(REPO_ROOT, name), src / name)
    for package in ("audiotok", "pipelines", "transforms", "runners"):
        shutil.copytree(os.path.join(REPO_ROOT, package), src / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q", "-w", str(dist)],
         cwd=tmp_path, env=env, timeout=300)
    (wheel,) = glob.glob(str(dist / "audiotok-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"audiotok/__init__.py", "audiotok/pipelines/cli.py", "audiotok/transforms/storage.py",
            "audiotok/runners/profiles.py", "audiotok/runners/dataflow/Dockerfile",
            "audiotok/runners/dataflow/metadata.json", "audiotok/runners/dataflow/flex_main.py"} <= names
    # One import root: nothing but audiotok (and its dist-info) at the top level of site-packages.
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"audiotok"}

    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], timeout=120)
    new_python = str(venv / "bin" / "python")
    _run([sys.executable, "-m", "pip", "--python", new_python, "install", "--no-deps", "--no-index", "-q", wheel],
         env=env, timeout=300)
    new_site = _run([new_python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                    env=env).stdout.strip()
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
