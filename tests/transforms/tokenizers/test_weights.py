"""Checkpoints: locations, the local cache of remote folders, hashes and pins, pickle refusal."""

from __future__ import annotations

import argparse
import shutil

import fsspec
import pytest

torch = pytest.importorskip("torch")

from audiotok.transforms.tokenizers import weights  # noqa: E402
from audiotok.transforms.tokenizers.weights import Checkpoint, UnsafeCheckpointError, WeightsError  # noqa: E402


def _write_checkpoint(folder, tensors: dict, *, fmt: str = "safetensors", config: str = '{"model_type": "x"}'):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(config)
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(tensors, str(folder / "model.safetensors"))
    else:
        torch.save(tensors, folder / "pytorch_model.bin")
    return folder


def test_location_kinds(tmp_path):
    assert weights.location_kind("facebook/encodec_24khz") == "hub"
    assert weights.location_kind(str(tmp_path)) == "local"
    assert weights.location_kind(f"file://{tmp_path}") == "local"
    assert weights.location_kind("gs://bucket/models/encodec") == "remote"
    assert weights.location_kind("s3://bucket/models/encodec") == "remote"
    with pytest.raises(ValueError, match="refusing"):
        weights.location_kind("pipe:curl http://x")
    with pytest.raises(ValueError, match="Hub id"):
        weights.location_kind("not a model")


def test_checkpoint_options_are_checked():
    with pytest.raises(ValueError, match="64 lowercase hex"):
        Checkpoint("facebook/x", sha256="abc")
    with pytest.raises(ValueError, match="only applies to Hub ids"):
        Checkpoint("gs://bucket/m", revision="main")


def test_identity_is_the_content_not_the_place(tmp_path):
    a = _write_checkpoint(tmp_path / "a", {"w": torch.arange(6.0)})
    b = tmp_path / "elsewhere" / "b"
    shutil.copytree(a, b)
    (b / "README.md").write_text("not part of the checkpoint")
    assert Checkpoint(str(a)).identity() == Checkpoint(str(b)).identity()
    c = _write_checkpoint(tmp_path / "c", {"w": torch.arange(6.0) + 1})
    assert Checkpoint(str(c)).identity() != Checkpoint(str(a)).identity()
    # The config is part of the checkpoint too: the same tensors in another architecture differ.
    d = _write_checkpoint(tmp_path / "d", {"w": torch.arange(6.0)}, config='{"model_type": "y"}')
    assert Checkpoint(str(d)).identity() != Checkpoint(str(a)).identity()


def test_pin_is_checked(tmp_path):
    folder = _write_checkpoint(tmp_path / "m", {"w": torch.ones(3)})
    digest = weights.resolve(Checkpoint(str(folder))).sha256
    pinned = Checkpoint(str(folder), sha256=digest)
    assert pinned.identity() == f"sha256:{digest}"  # no hashing needed to build a job
    assert weights.resolve(pinned).sha256 == digest
    wrong = "0" * 64
    with pytest.raises(WeightsError, match=f"pin is {wrong}, the files hash to {digest}"):
        weights.resolve(Checkpoint(str(folder), sha256=wrong))


def test_safetensors_win_over_torch_files(tmp_path):
    folder = _write_checkpoint(tmp_path / "m", {"w": torch.ones(3)})
    torch.save({"w": torch.zeros(3)}, folder / "pytorch_model.bin")
    resolved = weights.resolve(Checkpoint(str(folder)))
    assert resolved.weight_format == "safetensors"
    assert resolved.files == ("config.json", "model.safetensors")


def test_missing_files_are_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="no config.json"):
        weights.resolve(Checkpoint(str(tmp_path / "empty")))
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text("{}")
    with pytest.raises(WeightsError, match="no weight files"):
        weights.resolve(Checkpoint(str(tmp_path / "cfg")))
    with pytest.raises(WeightsError, match="no such folder"):
        weights.resolve(Checkpoint(str(tmp_path / "absent")))


def test_tensor_only_torch_file_loads(tmp_path):
    folder = _write_checkpoint(tmp_path / "m", {"w": torch.arange(4.0)}, fmt="torch")
    resolved = weights.resolve(Checkpoint(str(folder)))
    assert resolved.weight_format == "torch"
    weights.check_loadable(resolved)
    assert torch.equal(weights.load_state_dict(resolved)["w"], torch.arange(4.0))


def test_checkpoint_needing_pickle_is_refused(tmp_path):
    folder = _write_checkpoint(tmp_path / "m", {"w": torch.ones(2), "args": argparse.Namespace(lr=0.1)}, fmt="torch")
    resolved = weights.resolve(Checkpoint(str(folder)))
    with pytest.raises(UnsafeCheckpointError, match="needs pickle") as err:
        weights.check_loadable(resolved)
    assert "pytorch_model.bin" in str(err.value) and "safetensors" in str(err.value)


def test_remote_folder_is_copied_once_into_the_cache(tmp_path):
    local = _write_checkpoint(tmp_path / "local", {"w": torch.arange(5.0)})
    fs = fsspec.filesystem("memory")
    for name in ("config.json", "model.safetensors"):
        fs.pipe(f"/ckpt-test/{name}", (local / name).read_bytes())
    fs.pipe("/ckpt-test/README.md", b"ignored")
    cache = tmp_path / "cache"
    first = weights.resolve(Checkpoint("memory://ckpt-test"), cache_dir=str(cache))
    assert sorted(p.name for p in (cache / first.directory.split("/")[-1]).iterdir()) == ["config.json",
                                                                                          "model.safetensors"]
    assert first.sha256 == weights.resolve(Checkpoint(str(local))).sha256  # same files, same identity
    # Another process (simulated: the per-process memo cleared) finds the copy and fetches nothing.
    weights._RESOLVED.clear()
    calls = []
    original = fsspec.implementations.memory.MemoryFileSystem.get_file

    def counting_get_file(self, *args, **kwargs):
        calls.append(args)
        return original(self, *args, **kwargs)

    monkey = pytest.MonkeyPatch()
    monkey.setattr(fsspec.implementations.memory.MemoryFileSystem, "get_file", counting_get_file)
    try:
        again = weights.resolve(Checkpoint("memory://ckpt-test"), cache_dir=str(cache))
        assert (again.directory, again.sha256, calls) == (first.directory, first.sha256, [])
        # A changed object gets a fresh copy, and a new identity.
        changed = _write_checkpoint(tmp_path / "changed", {"w": torch.arange(7.0)})
        fs.pipe("/ckpt-test/model.safetensors", (changed / "model.safetensors").read_bytes())
        weights._RESOLVED.clear()
        fresh = weights.resolve(Checkpoint("memory://ckpt-test"), cache_dir=str(cache))
        assert fresh.directory != first.directory and fresh.sha256 != first.sha256 and len(calls) == 2
    finally:
        monkey.undo()
        fs.rm("/ckpt-test", recursive=True)


def test_hub_failure_names_the_way_out(monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(WeightsError, match="model=DIR or a gs://"):
        weights.resolve(Checkpoint("example-org/absent-model"))
    with pytest.raises(WeightsError, match="Hugging Face Hub"):
        Checkpoint("example-org/absent-model").read_config()


def test_cli_prints_the_pin(tmp_path, capsys):
    folder = _write_checkpoint(tmp_path / "m", {"w": torch.ones(1)})
    assert weights.main([str(folder)]) == 0
    assert capsys.readouterr().out.strip() == weights.resolve(Checkpoint(str(folder))).sha256


@pytest.mark.parametrize("fmt", ["safetensors", "torch"])
def test_hub_ids_resolve_through_the_hub_cache(tmp_path, monkeypatch, fmt):
    """A Hub id is fetched with huggingface_hub (safetensors only when the repository has them,
    else its torch files) and hashes like the same files anywhere else."""
    import fnmatch

    import huggingface_hub

    source = _write_checkpoint(tmp_path / "repo", {"w": torch.arange(3.0)}, fmt=fmt)
    (source / "tf_model.h5").write_bytes(b"never fetched")
    calls = []

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=()):
        calls.append((repo_id, revision, tuple(allow_patterns)))
        snapshot = tmp_path / "hub" / str(len(calls))
        snapshot.mkdir(parents=True)
        for path in source.iterdir():
            if any(fnmatch.fnmatch(path.name, p) for p in allow_patterns):
                shutil.copy(path, snapshot / path.name)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    resolved = weights.resolve(Checkpoint(f"example-org/tiny-{fmt}", revision="v1"))
    assert resolved.sha256 == weights.resolve(Checkpoint(str(source))).sha256
    assert all(c[:2] == (f"example-org/tiny-{fmt}", "v1") for c in calls)
    assert "*.safetensors" in calls[0][2] and len(calls) == (1 if fmt == "safetensors" else 2)
    assert "tf_model.h5" not in resolved.files
