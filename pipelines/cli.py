"""The ``audiotok`` command: subcommands -> pipeline modules; nothing else."""

from __future__ import annotations

import importlib
import logging
import sys

SUBCOMMANDS = {
    "tokenize": ("audiotok.pipelines.tokenize", "audio files -> WebDataset token shards"),
    "fit-kmeans": ("audiotok.pipelines.fit_kmeans", "fit a k-means codebook for a units tokenizer"),
    "decode": ("audiotok.pipelines.decode_codes", "codec codes of one sample -> a WAV file"),
    "inspect": ("audiotok.pipelines.inspect", "print a dataset's summary and one decoded sample"),
    "verify": ("audiotok.pipelines.verify", "check every shard of a dataset; exit 1 listing the problems"),
    "card": ("audiotok.pipelines.card", "(re)write a dataset's card: README.md, stats.json, plots"),
    "export": ("audiotok.pipelines.export", "copy a dataset to another format (lhotse-shar)"),
    "compact": ("audiotok.pipelines.compact", "rewrite a dataset's live samples into fresh full shards"),
    "gc": ("audiotok.pipelines.gc", "delete the files only replaced dataset versions need (after a grace period)"),
}


def usage() -> str:
    lines = ["usage: audiotok SUBCOMMAND [flags]   (audiotok SUBCOMMAND --help for its flags)", ""]
    lines += [f"  {name:<12} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    return "\n".join(lines)


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
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from audiotok.transforms.storage import install_log_redaction

    install_log_redaction()  # no credential reaches the logs, whichever library logs it
    for noisy in ("apache_beam", "absl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:
        handler.addFilter(drop_known_noise)
    module = importlib.import_module(SUBCOMMANDS[command][0])
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
