"""The ``audiotok`` command: subcommands -> pipeline modules; nothing else."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import logging
import re
import sys
from typing import Callable, Iterable, Sequence


@dataclasses.dataclass(frozen=True)
class Subcommand:
    """One ``audiotok`` subcommand.

    Attributes:
        module: the module whose ``main(argv)`` runs it.
        summary: one line for the usage text.
        extra: the ``audiotok[...]`` extra it needs beyond ``pip install audiotok`` (None: none).
    """

    module: str
    summary: str
    extra: str | None = None


SUBCOMMANDS = {
    "tokenize": Subcommand("audiotok.pipelines.tokenize", "audio files -> WebDataset token shards", "pipeline"),
    "fit-kmeans": Subcommand("audiotok.pipelines.fit_kmeans", "fit a k-means codebook for a units tokenizer",
                             "pipeline"),
    "decode": Subcommand("audiotok.pipelines.decode_codes", "codec codes of one sample -> a WAV file", "pipeline"),
    "inspect": Subcommand("audiotok.pipelines.inspect", "print a dataset's summary and one decoded sample"),
    "verify": Subcommand("audiotok.pipelines.verify", "check every shard of a dataset; exit 1 listing the problems"),
    "card": Subcommand("audiotok.pipelines.card", "(re)write a dataset's card: README.md, stats.json, plots"),
    "export": Subcommand("audiotok.pipelines.export", "copy a dataset to another format (lhotse-shar)", "lhotse"),
    "compact": Subcommand("audiotok.pipelines.compact", "rewrite a dataset's live samples into fresh full shards",
                          "pipeline"),
    "gc": Subcommand("audiotok.pipelines.gc", "delete the files only replaced dataset versions need (after a grace "
                     "period)"),
}


def usage() -> str:
    lines = ["usage: audiotok SUBCOMMAND [flags]   (audiotok SUBCOMMAND --help for its flags)", ""]
    lines += [f"  {name:<12} {command.summary}" for name, command in SUBCOMMANDS.items()]
    return "\n".join(lines)


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def missing_for_extra(extra: str, requires: Iterable[str] | None = None,
                      installed: Callable[[str], bool] = _installed) -> list[str]:
    """The distributions that ``audiotok[extra]`` declares and this environment lacks.

    Args:
        extra: an extra of setup.py, e.g. ``pipeline``.
        requires: ``Requires-Dist`` entries (default: the installed audiotok's metadata; none
            when audiotok runs from a source tree that was not installed).
        installed: whether a distribution is installed.
    """
    if requires is None:
        try:
            requires = importlib.metadata.requires("audiotok") or []
        except importlib.metadata.PackageNotFoundError:
            requires = []
    marker = re.compile(r"""extra\s*==\s*["']""" + re.escape(extra) + r"""["']""")
    missing = []
    for entry in requires:
        requirement, _, condition = entry.partition(";")
        name = re.match(r"\s*([A-Za-z0-9._-]+)", requirement)
        if name and marker.search(condition) and not installed(name.group(1)):
            missing.append(name.group(1))
    return missing


def install_hint(command: str, missing: Sequence[str]) -> str:
    """The one line printed when ``command`` lacks the libraries of its extra."""
    extra = SUBCOMMANDS[command].extra
    return (f"audiotok {command} needs the {extra} extra (missing: {', '.join(missing)}): "
            f"pip install 'audiotok[{extra}]'")


# Warnings that say nothing to a user. Beam 2.77's RunInference logs the first on the root
# logger at every model load: its optional ModelManager import fails, and takes the (present)
# ``resource`` module down with it.
KNOWN_NOISE = ("Resource module is not available for current platform",)


def drop_known_noise(record: logging.LogRecord) -> bool:
    """A logging filter: False for the records of :data:`KNOWN_NOISE`."""
    return not str(record.msg).startswith(KNOWN_NOISE)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in SUBCOMMANDS:
        print(f"audiotok: unknown subcommand {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    missing = missing_for_extra(SUBCOMMANDS[command].extra) if SUBCOMMANDS[command].extra else []
    if missing:
        print(install_hint(command, missing), file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from audiotok.transforms.storage import install_log_redaction

    install_log_redaction()  # no credential reaches the logs, whichever library logs it
    for noisy in ("apache_beam", "absl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:
        handler.addFilter(drop_known_noise)
    from audiotok.transforms import interpreter

    with interpreter.startup():  # Beam, torch and our modules live as long as the process
        module = importlib.import_module(SUBCOMMANDS[command].module)
    return module.main(rest)


def entry_point() -> int:
    """The ``audiotok`` executable: :func:`main` in a process it owns (see
    ``audiotok.transforms.interpreter``); a caller of :func:`main` keeps its own process as it is."""
    from audiotok.transforms import interpreter

    interpreter.own_process()
    return main()


if __name__ == "__main__":
    sys.exit(entry_point())
