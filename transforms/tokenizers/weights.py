"""Model checkpoints: where they come from, what they are, and whether they are safe to load.

A checkpoint is a folder holding ``config.json`` and weight files, named by one of:

* a Hugging Face Hub id (``facebook/encodec_24khz``, optionally at a ``revision``), fetched
  through ``huggingface_hub`` into its own cache;
* a local folder (``/models/encodec``, ``file:///models/encodec``);
* any other fsspec URL (``gs://bucket/encodec``, ``s3://...``), copied once into a local cache
  (``CACHE_DIR``) that every process of a worker shares.

Only safetensors files, or torch files that ``torch.load(weights_only=True)`` accepts, are
loaded; a checkpoint that needs pickle to load is refused (``UnsafeCheckpointError``).

A checkpoint's identity is the sha256 of its files (``tree_sha256``): the same files give the
same identity wherever they are read from. Pin it with ``sha256=`` to have it checked at load
(and to skip hashing when a job is built); ``python -m audiotok.transforms.tokenizers.weights LOCATION``
prints it.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import posixpath
import re
import shutil
import sys
import threading
import uuid
from typing import Any, ClassVar, Sequence

from audiotok.transforms import storage
from audiotok.transforms.tokenizers.base import TokenizerConfig

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
SAFETENSORS_SUFFIX = ".safetensors"
TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# Sharded checkpoints name their shards in an index file; it travels and is hashed with them.
INDEX_SUFFIX = ".index.json"

# Where checkpoints read from object stores are copied, one folder per checkpoint version.
CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "audiotok", "weights")

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class WeightsError(ValueError):
    """A checkpoint that cannot be found, fetched, or verified; names its location."""

    def __init__(self, location: str, message: str):
        super().__init__(f"{location}: {message}")
        self.location = location


class UnsafeCheckpointError(WeightsError):
    """A weight file that only loads through pickle (it holds Python objects, not just tensors)."""


def install_hint(package: str, extra: str) -> str:
    return f"{package} is not installed: pip install 'audiotok[{extra}]'"


def location_kind(location: str) -> str:
    """``local``, ``remote`` (an fsspec URL) or ``hub`` (a Hugging Face Hub id).

    Raises:
        ValueError: the location is none of these (or a command-running scheme).
    """
    storage.check_url(location)
    if location.startswith("file://"):
        return "local"
    if "://" in location or "::" in location:
        return "remote"
    if os.path.exists(location) or location.startswith(("/", "./", "../", "~")):
        return "local"
    if _HUB_ID.match(location):
        return "hub"
    raise ValueError(
        f"model location {location!r} is not an existing folder, a URL (gs://, s3://, ...) "
        "or a Hugging Face Hub id (org/name)")


def _local_path(location: str) -> str:
    path = location[len("file://"):] if location.startswith("file://") else location
    return os.path.expanduser(path)


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """Where a model's weights are, and optionally what they must hash to.

    Attributes:
        location: Hub id, local folder, or fsspec URL of a folder.
        revision: Hub branch, tag or commit (Hub ids only).
        sha256: expected ``tree_sha256`` of the checkpoint's files; checked when it is resolved.
    """

    location: str
    revision: str | None = None
    sha256: str | None = None

    def __post_init__(self) -> None:
        kind = location_kind(self.location)
        if kind == "local":  # resolved once per process: the same name must mean the same folder
            object.__setattr__(self, "location", storage.absolute(self.location))
        if self.revision and kind != "hub":
            raise ValueError(f"revision={self.revision!r} only applies to Hub ids. Found location: {self.location!r}")
        if self.sha256 is not None and not _SHA256.match(self.sha256):
            raise ValueError(f"sha256 must be 64 lowercase hex characters. Found: {self.sha256!r}")

    @property
    def kind(self) -> str:
        return location_kind(self.location)

    def identity(self) -> str:
        """``sha256:<tree hash>``: the pin when there is one, else the hash of the resolved files."""
        if self.sha256:
            return f"sha256:{self.sha256}"
        return f"sha256:{resolve(self).sha256}"

    def read_config(self) -> dict[str, Any]:
        """The checkpoint's ``config.json`` alone (cheap: no weights are fetched)."""
        kind = self.kind
        try:
            if kind == "local":
                with open(os.path.join(_local_path(self.location), CONFIG_NAME), "rb") as f:
                    data = f.read()
            elif kind == "remote":
                data = storage.read_bytes(storage.join(self.location, CONFIG_NAME))
            else:
                data = _hub_file(self.location, CONFIG_NAME, self.revision)
        except WeightsError:
            raise
        except (OSError, ValueError) as e:
            raise WeightsError(self.location, f"cannot read {CONFIG_NAME} ({e})") from None
        try:
            config = json.loads(data)
        except ValueError as e:
            raise WeightsError(self.location, f"{CONFIG_NAME} is not JSON ({e})") from None
        if not isinstance(config, dict):
            raise WeightsError(self.location, f"{CONFIG_NAME} is not a JSON object")
        return config


@dataclasses.dataclass(frozen=True)
class ModelConfig(TokenizerConfig):
    """Options every tokenizer with a model shares.

    Attributes:
        model: the checkpoint: Hub id, local folder, or gs:// / s3:// (any fsspec URL) folder.
        revision: Hub branch, tag or commit (Hub ids only).
        sha256: pin: the checkpoint's tree hash, checked at load (``python -m
            audiotok.transforms.tokenizers.weights LOCATION`` prints it).
        chunk_s: a longer segment is encoded in overlapping chunks of this many seconds.
        overlap_s: overlap between chunks; stitching keeps each chunk's frames up to the middle
            of its overlaps.
    """

    LOCATIONS: ClassVar[tuple[str, ...]] = ("model", "revision", "sha256")

    model: str = ""
    revision: str | None = None
    sha256: str | None = None
    chunk_s: float = 60.0
    overlap_s: float = 2.0

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model= is required: a Hub id, a local folder, or a gs:// / s3:// folder")
        self.checkpoint()  # checks the location's form, the revision and the pin
        if not self.chunk_s > 0 or not 0 <= self.overlap_s < self.chunk_s:
            raise ValueError(f"need chunk_s > 0 and 0 <= overlap_s < chunk_s. Found: {self.chunk_s}, {self.overlap_s}")

    def checkpoint(self) -> Checkpoint:
        return Checkpoint(self.model, revision=self.revision, sha256=self.sha256)


@dataclasses.dataclass(frozen=True)
class ResolvedCheckpoint:
    """A checkpoint on local disk.

    Attributes:
        directory: the local folder.
        files: the files that make the checkpoint (relative paths): ``config.json``, the weight
            files and any shard index.
        weight_format: ``safetensors`` or ``torch``.
        sha256: the tree hash of ``files``.
    """

    directory: str
    files: tuple[str, ...]
    weight_format: str
    sha256: str

    @property
    def weight_files(self) -> tuple[str, ...]:
        return tuple(f for f in self.files if f.endswith((SAFETENSORS_SUFFIX, *TORCH_SUFFIXES)))

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def config(self) -> dict[str, Any]:
        with open(self.path(CONFIG_NAME), "rb") as f:
            return json.loads(f.read())


def select_files(names: Sequence[str], location: str = "") -> tuple[tuple[str, ...], str]:
    """The files of a checkpoint folder that are loaded, and their format.

    Safetensors files win over torch files when both are present (torch files are then
    neither fetched nor hashed).

    Args:
        names: relative paths of every file in the folder.

    Returns:
        (files, ``safetensors`` or ``torch``).

    Raises:
        WeightsError: no config.json or no weight file.
    """
    names = sorted(set(names))
    if CONFIG_NAME not in names:
        found = ", ".join(names) or "nothing"
        raise WeightsError(location, f"no {CONFIG_NAME} in the checkpoint folder (found: {found})")
    safetensors = [n for n in names if n.endswith(SAFETENSORS_SUFFIX)]
    torch_files = [n for n in names if n.endswith(TORCH_SUFFIXES) and not n.startswith("optimizer")]
    weights, fmt = (safetensors, "safetensors") if safetensors else (torch_files, "torch")
    if not weights:
        kinds = ", ".join("*" + s for s in (SAFETENSORS_SUFFIX, *TORCH_SUFFIXES))
        raise WeightsError(location, f"no weight files ({kinds})")
    index = [n for n in names if n.endswith(INDEX_SUFFIX) and n != CONFIG_NAME]
    return tuple(sorted([CONFIG_NAME, *weights, *index])), fmt


# --------------------------------------------------------------------------- hashing

_HASH_LOCK = threading.Lock()
_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str) -> str:
    """sha256 of a local file (remembered per process while its size and mtime stay the same)."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    with _HASH_LOCK:
        if key in _FILE_HASHES:
            return _FILE_HASHES[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    with _HASH_LOCK:
        _FILE_HASHES[key] = digest
    return digest


def tree_sha256(directory: str, files: Sequence[str]) -> str:
    """sha256 over ``relative path<TAB>file sha256`` lines, sorted by path."""
    lines = "".join(f"{name}\t{file_sha256(os.path.join(directory, name))}\n" for name in sorted(files))
    return hashlib.sha256(lines.encode()).hexdigest()


# --------------------------------------------------------------------------- resolving

_RESOLVE_LOCK = threading.Lock()
_RESOLVED: dict[tuple[str, str | None, str | None, str], ResolvedCheckpoint] = {}


def resolve(checkpoint: Checkpoint, cache_dir: str | None = None) -> ResolvedCheckpoint:
    """Brings a checkpoint to local disk (once per process), hashes it, checks the pin.

    Args:
        checkpoint: what to resolve.
        cache_dir: where remote folders are copied (default ``CACHE_DIR``).

    Raises:
        WeightsError: not found, not fetchable, or its hash differs from the pin.
    """
    cache_dir = cache_dir or CACHE_DIR
    key = (checkpoint.location, checkpoint.revision, checkpoint.sha256, cache_dir)
    with _RESOLVE_LOCK:
        if key in _RESOLVED:
            return _RESOLVED[key]
        kind = checkpoint.kind
        if kind == "local":
            directory = _local_path(checkpoint.location)
            if not os.path.isdir(directory):
                raise WeightsError(checkpoint.location, "no such folder")
            names = _list_local(directory)
        elif kind == "remote":
            directory, names = _fetch_remote(checkpoint.location, cache_dir)
        else:
            directory, names = _fetch_hub(checkpoint.location, checkpoint.revision)
        files, fmt = select_files(names, checkpoint.location)
        digest = tree_sha256(directory, files)
        if checkpoint.sha256 and digest != checkpoint.sha256:
            raise WeightsError(
                checkpoint.location,
                f"sha256 mismatch: the pin is {checkpoint.sha256}, the files hash to {digest} "
                "(other weights than the ones pinned; re-pin only if the change is intended)")
        resolved = ResolvedCheckpoint(directory=directory, files=files, weight_format=fmt, sha256=digest)
        _RESOLVED[key] = resolved
        logger.info("checkpoint %s -> %s (sha256 %s)", checkpoint.location, directory, digest[:16])
        return resolved


def _list_local(directory: str) -> list[str]:
    names = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            names.append(os.path.relpath(os.path.join(root, name), directory).replace(os.sep, "/"))
    return names


def _fetch_remote(url: str, cache_dir: str) -> tuple[str, list[str]]:
    """Copies a remote checkpoint folder into ``cache_dir/<key>`` unless it is already there.

    The key hashes the URL and each file's size and store version (GCS generation, S3 ETag),
    so a changed object gets a fresh copy. Processes of one worker take a file lock; the copy
    is written to a temporary folder and renamed into place, so readers never see half of it.
    """
    try:
        fs, root = storage.filesystem(url)
        found = fs.find(root, detail=True)
    except (OSError, ValueError) as e:
        raise WeightsError(url, f"cannot list the checkpoint folder ({e})") from None
    root = root.rstrip("/")
    infos = {posixpath.relpath(path, root): info for path, info in found.items() if info.get("type") != "directory"}
    if not infos:
        raise WeightsError(url, "no such folder, or it is empty")
    files, _ = select_files(list(infos), url)
    listing = [(name, infos[name].get("size"), storage.version_marker(infos[name])) for name in files]
    key = hashlib.sha256(json.dumps([url, listing], default=str).encode()).hexdigest()[:24]
    target = os.path.join(cache_dir, key)
    os.makedirs(cache_dir, exist_ok=True)
    with open(os.path.join(cache_dir, f"{key}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not os.path.isdir(target):
                partial = os.path.join(cache_dir, f"{key}.partial-{uuid.uuid4().hex[:8]}")
                try:
                    for name in files:
                        dest = os.path.join(partial, *name.split("/"))
                        os.makedirs(os.path.dirname(dest), exist_ok=True)
                        fs.get_file(f"{root}/{name}", dest)
                    os.rename(partial, target)
                except BaseException:
                    shutil.rmtree(partial, ignore_errors=True)
                    raise
                logger.info("copied checkpoint %s to %s", url, target)
        except OSError as e:
            raise WeightsError(url, f"cannot copy the checkpoint to {cache_dir} ({e})") from None
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return target, list(files)


def _hub_error(repo_id: str, error: Exception) -> WeightsError:
    return WeightsError(
        repo_id,
        f"cannot fetch from the Hugging Face Hub ({type(error).__name__}: {error}). Without network access, "
        f"download it elsewhere (`hf download {repo_id} --local-dir DIR`) and pass model=DIR or a gs:// / s3:// copy")


def _fetch_hub(repo_id: str, revision: str | None) -> tuple[str, list[str]]:
    """A Hub snapshot: safetensors when the repository has them, torch files otherwise."""
    try:
        import huggingface_hub
    except ImportError:
        raise WeightsError(repo_id, install_hint("huggingface_hub", "models")) from None
    try:
        directory = huggingface_hub.snapshot_download(
            repo_id, revision=revision, allow_patterns=[CONFIG_NAME, f"*{SAFETENSORS_SUFFIX}", f"*{INDEX_SUFFIX}"])
        names = _list_local(directory)
        if not any(n.endswith(SAFETENSORS_SUFFIX) for n in names):
            directory = huggingface_hub.snapshot_download(
                repo_id, revision=revision,
                allow_patterns=[CONFIG_NAME, *(f"*{s}" for s in TORCH_SUFFIXES), f"*{INDEX_SUFFIX}"])
            names = _list_local(directory)
    except Exception as e:  # huggingface_hub raises many unrelated types for "unreachable"
        raise _hub_error(repo_id, e) from None
    return directory, names


def _hub_file(repo_id: str, name: str, revision: str | None) -> bytes:
    try:
        import huggingface_hub
    except ImportError:
        raise WeightsError(repo_id, install_hint("huggingface_hub", "models")) from None
    try:
        path = huggingface_hub.hf_hub_download(repo_id, name, revision=revision)
    except Exception as e:  # see _fetch_hub
        raise _hub_error(repo_id, e) from None
    with open(path, "rb") as f:
        return f.read()


# --------------------------------------------------------------------------- loading


def load_tensors(path: str) -> dict[str, Any]:
    """The tensors of one weight file, without pickle.

    Args:
        path: a ``.safetensors`` file, or a torch file holding only tensors (and plain
            containers of them).

    Returns:
        name -> torch.Tensor; a torch file holding a ``state_dict`` entry returns that.

    Raises:
        UnsafeCheckpointError: the file needs pickle (``torch.load(weights_only=True)`` refuses it).
    """
    if path.endswith(SAFETENSORS_SUFFIX):
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    import pickle

    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsafeCheckpointError(
            path,
            "this checkpoint needs pickle to load (it holds Python objects, not only tensors), and audiotok "
            "only loads safetensors or torch.load(weights_only=True) files. Convert it once where you trust it: "
            "load it, then save its state_dict with safetensors.torch.save_file. "
            f"(torch said: {first_line})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise UnsafeCheckpointError(path, f"expected a dict of tensors. Found: {type(obj).__name__}")
    return obj


def check_loadable(resolved: ResolvedCheckpoint) -> None:
    """Refuses a torch-format checkpoint whose files need pickle (before a library loads them)."""
    if resolved.weight_format == "torch":
        for name in resolved.weight_files:
            load_tensors(resolved.path(name))


def load_state_dict(resolved: ResolvedCheckpoint) -> dict[str, Any]:
    """Every tensor of the checkpoint's weight files, merged."""
    tensors: dict[str, Any] = {}
    for name in resolved.weight_files:
        tensors.update(load_tensors(resolved.path(name)))
    return tensors


def main(argv: list[str] | None = None) -> int:
    """``python -m audiotok.transforms.tokenizers.weights LOCATION [REVISION]``: prints the sha256 to pin."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not 1 <= len(args) <= 2 or args[0] in ("-h", "--help"):
        print("usage: python -m audiotok.transforms.tokenizers.weights LOCATION [REVISION]", file=sys.stderr)
        return 2
    resolved = resolve(Checkpoint(args[0], revision=args[1] if len(args) > 1 else None))
    print(resolved.sha256)
    for name in resolved.files:
        print(f"  {name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

