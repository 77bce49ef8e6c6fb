"""Dataflow Flex Template entry point: a scheduled, incremental refresh of a token dataset.

The template launcher runs this file (``FLEX_TEMPLATE_PYTHON_PY_FILE`` in the Dockerfile)
with the template's parameters and Dataflow's own options as flags (``--input=...``,
``--output=...``, ``--project=...``, ``--region=...``, ``--temp_location=...``). It submits
the job and exits without waiting, as a launcher must. A refresh is incremental: files
already tokenized with the same settings are skipped, and a missing dataset is created.
The profile is ``dataflow`` unless the ``profile`` parameter says ``dataflow-gpu``.
"""

import logging
import sys

from pipelines import tokenize


def main(argv: list[str]) -> int:
    # Later flags win: a --profile among the parameters replaces this default.
    return tokenize.main(["--profile=dataflow", "--incremental", *argv], wait=False)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main(sys.argv[1:]))
