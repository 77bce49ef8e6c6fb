"""Dataflow Flex Template entry point: a scheduled, incremental refresh of a token dataset.

The template launcher runs this file (``FLEX_TEMPLATE_PYTHON_PY_FILE`` in the Dockerfile)
with the template's parameters and Dataflow's own options as flags (``--input=...``,
``--output=...``, ``--project=...``, ``--region=...``, ``--temp_location=...``). It submits
the job and exits without waiting, as a launcher must. A refresh is incremental: files
already tokenized with the same settings are skipped, and a missing dataset is created.
The profile is ``dataflow`` unless the ``profile`` parameter says ``dataflow-gpu``.

Template parameter names use underscores (``batch_max_s``); they are turned back into our
flags (``--batch-max-s``). Dataflow's own options keep theirs (``--temp_location``).
"""

import logging
import sys

from audiotok.pipelines import options, tokenize
from audiotok.runners.dataflow.metadata import TEMPLATE_PROFILES


def our_flags(argv: list[str]) -> list[str]:
    """``--batch_max_s=30`` -> ``--batch-max-s=30`` for the flags of ``audiotok tokenize``;
    every other argument unchanged."""
    parser = options.parser(options.TokenizeOptions, prog="flex")
    known = {s for action in parser._actions for s in action.option_strings}
    out = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        hyphenated = name.replace("_", "-")
        out.append(f"{hyphenated}{eq}{value}" if name.startswith("--") and name not in known
                   and hyphenated in known else arg)
    return out


def main(argv: list[str]) -> int:
    # Later flags win: a --profile among the parameters replaces this default.
    return tokenize.main([f"--profile={TEMPLATE_PROFILES[0]}", "--incremental", *our_flags(argv)], wait=False)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main(sys.argv[1:]))
