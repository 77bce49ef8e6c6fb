"""Job-server jars: the launcher jar Java runs, and the fallback from the SDK's jar to the
assembled test job server, with a stand-in Maven (no network; the real one runs in
``test_spark_flink.py``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile

import pytest

from audiotok.runners import jobservers

HELLO = """
public class Hello {
    public static void main(String[] args) {
        Module us = Hello.class.getModule();
        System.out.println(Object.class.getModule().isOpen("java.lang", us) + " "
                           + Object.class.getModule().isOpen("java.io", us));
    }
}
"""


def test_manifest_lines_fold_at_72_bytes():
    value = " ".join(f"lib/some-rather-long-library-name-{i}.jar" for i in range(30))
    text = jobservers.manifest({"Manifest-Version": "1.0", "Class-Path": value}).decode()
    lines = text.split("\r\n")
    assert all(len(line.encode()) <= 72 for line in lines)
    assert text.endswith("\r\n\r\n")
    unfolded = "".join(line[1:] if line.startswith(" ") else "\n" + line for line in lines).strip()
    assert unfolded.splitlines() == ["Manifest-Version: 1.0", f"Class-Path: {value}"]


@pytest.mark.skipif(shutil.which("javac") is None or shutil.which("java") is None, reason="no JDK here")
def test_java_runs_the_launcher_jars_main_with_its_class_path_and_opens(tmp_path):
    (tmp_path / "Hello.java").write_text(HELLO)
    subprocess.run(["javac", "-d", str(tmp_path / "classes"), str(tmp_path / "Hello.java")], check=True, timeout=120)
    (tmp_path / "lib").mkdir()
    with zipfile.ZipFile(tmp_path / "lib" / "hello-1.0.jar", "w") as jar:
        jar.write(tmp_path / "classes" / "Hello.class", "Hello.class")
    # Entries that do not exist before the real one: the Class-Path line folds several times.
    class_path = [f"lib/absent-library-with-a-long-name-{i}.jar" for i in range(10)] + ["lib/hello-1.0.jar"]
    launcher = jobservers.write_launcher_jar(tmp_path / "launcher.jar", "Hello", class_path, ["java.base/java.lang"])
    assert launcher.stat().st_size < 4096
    done = subprocess.run(["java", "-jar", str(launcher)], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path / "classes")  # a cwd holding Hello.class: the jar's path must serve it
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["true", "false"]  # java.lang opened, java.io not


def test_launcher_jar_refuses_class_path_entries_that_need_escaping(tmp_path):
    with pytest.raises(ValueError, match="lib/a b.jar"):
        jobservers.write_launcher_jar(tmp_path / "x.jar", "Main", ["lib/a b.jar"])


def test_pom_leaves_log4j1_out_of_every_dependency():
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    for server in jobservers.TEST_JOB_SERVERS.values():
        deps = ET.fromstring(server.pom()).findall("m:dependencies/m:dependency", ns)
        assert [f"{d.find('m:groupId', ns).text}:{d.find('m:artifactId', ns).text}:{d.find('m:version', ns).text}"
                for d in deps] == list(server.dependencies)
        for d in deps:
            excluded = {f"{e.find('m:groupId', ns).text}:{e.find('m:artifactId', ns).text}"
                        for e in d.findall("m:exclusions/m:exclusion", ns)}
            assert excluded == set(jobservers.LOG4J1)


FAKE_MVN = """#!/bin/sh
echo "$@" >> "$(dirname "$0")/calls"
for arg in "$@"; do
  case "$arg" in
    dependency:copy) echo "[ERROR] Failed to execute goal: Could not find artifact $ARTIFACT in central"; exit 1;;
    -DoutputDirectory=*) out="${arg#-DoutputDirectory=}";;
  esac
done
[ -f pom.xml ] || { echo "[ERROR] no pom.xml"; exit 1; }
for jar in beam-runners-core-2.56.0.jar spark-core_2.12-3.2.2.jar $EXTRA_JARS; do echo PK > "$out/$jar"; done
"""


@pytest.fixture
def fake_mvn(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mvn").write_text(FAKE_MVN)
    (bin_dir / "mvn").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("AUDIOTOK_JAR_CACHE", str(tmp_path / "cache"))
    return bin_dir / "calls"


def test_fetch_assembles_the_test_job_server_where_the_sdks_jar_is_not_served(fake_mvn, tmp_path, capsys):
    assert jobservers.main(["fetch", "spark"]) == 0
    out, err = capsys.readouterr()
    server = jobservers.TEST_JOB_SERVERS["spark"]
    jar = tmp_path / "cache" / server.name / server.jar_name
    assert out.strip() == str(jar)
    assert "Could not find artifact" in err and "Assembled instead a test job server from Beam 2.56.0" in err
    assert "not a pairing Beam supports" in err
    with zipfile.ZipFile(jar) as z:
        text = z.read("META-INF/MANIFEST.MF").decode().replace("\r\n ", "")
    assert f"Main-Class: {server.main_class}" in text
    assert "Class-Path: lib/beam-runners-core-2.56.0.jar lib/spark-core_2.12-3.2.2.jar" in text
    assert "Add-Opens: java.base/java.lang " in text
    assert jobservers.cached_job_server("spark") == (jar, True)
    # Cached: neither Maven call runs again (the SDK's jar is remembered as missing for a day).
    calls = fake_mvn.read_text()
    again, why = jobservers.fetch_job_server("spark")
    assert again == jar and "not served the last time" in why
    assert fake_mvn.read_text() == calls


def test_no_test_server_means_only_the_sdks_jar(fake_mvn, capsys):
    assert jobservers.main(["fetch", "flink", "--no-test-server"]) == 1
    assert "Could not find artifact" in capsys.readouterr().err
    assert "copy-dependencies" not in fake_mvn.read_text()
    assert jobservers.cached_job_server("flink") is None


def test_log4j1_in_the_libraries_fails_the_assembly_and_caches_nothing(fake_mvn, monkeypatch):
    monkeypatch.setenv("EXTRA_JARS", "log4j-1.2.17.jar")
    with pytest.raises(jobservers.JarUnavailable, match=r"log4j 1.x came in .*log4j-1.2.17.jar"):
        jobservers.fetch_job_server("spark")
    assert jobservers.cached_test_job_server("spark") is None
    assert not (jobservers.cache_dir() / jobservers.TEST_JOB_SERVERS["spark"].name).exists()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("mvn") is None or shutil.which("unshare") is None, reason="no mvn or unshare here")
def test_maven_that_reaches_no_registry_gives_its_answer_not_a_hang(tmp_path):
    """What a CI machine whose Maven cannot reach the registry sees (the Spark/Flink tests skip
    with this message): Maven run with an empty local repository in a namespace with no network."""
    from job_server_runs import loopback_only

    if subprocess.run(loopback_only(["true"]), capture_output=True).returncode != 0:
        pytest.skip("no network namespace here (root needed)")
    code = ("import sys\nfrom audiotok.runners import jobservers\n"
            "try:\n    jobservers.fetch_job_server('flink', timeout_s=120)\n"
            "except jobservers.JarUnavailable as e:\n    print(e)\n    sys.exit(3)\n")
    env = {**os.environ, "AUDIOTOK_JAR_CACHE": str(tmp_path / "cache"),
           "MAVEN_OPTS": f"-Dmaven.repo.local={tmp_path / 'm2'}"}
    done = subprocess.run(loopback_only([sys.executable, "-c", code]), capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 3, done.stderr[-2000:]
    message = done.stdout
    # The jar of the SDK's newest Flink (the SDK's release decides which that is).
    assert jobservers.coordinates("flink").artifact in message and "and the test job server" in message
    assert message.count("[ERROR]") >= 2  # Maven's own answer, for each of the two tries
    assert not list((tmp_path / "cache").glob("*.jar"))
