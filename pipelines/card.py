"""``audiotok card OUT``: (re)writes a dataset's card (``README.md``, ``stats.json``, ``card/*.svg``)
and its ``vocab.json``.

Every tokenize run writes the card too (from at most ``audiotok.transforms.card.RUN_MAX_SHARDS``
shards); this command reads every shard unless ``--max-shards`` says otherwise.
"""

from __future__ import annotations

import argparse
import logging
import sys

from audiotok.transforms import card, dataset, lm, storage

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="audiotok card", description=__doc__.split("\n\n")[0])
    parser.add_argument("output", help="the dataset folder (holding index.json); any fsspec URL")
    parser.add_argument("--max-shards", dest="max_shards", type=int, default=None,
                        help="per-sample statistics from at most this many evenly spaced shards (default: all)")
    args = parser.parse_args(argv)
    try:
        index = dataset.read_index(args.output)
    except (FileNotFoundError, OSError, ValueError) as e:
        print(f"audiotok card: cannot read {args.output}/{dataset.INDEX_NAME}: {e}", file=sys.stderr)
        return 1
    lm.write_vocab(args.output, index)  # derived from the index like the card (older datasets have none)
    stats = card.write_card(args.output, index, max_shards=args.max_shards)
    for line in card.dead_code_warnings(stats):
        logger.warning("%s", line)
    print(f"audiotok card: wrote {storage.join(args.output, card.README_NAME)}, {card.STATS_NAME} and "
          f"{len(stats['plots'])} plot(s) under {card.PLOTS_DIR}/", file=sys.stderr)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
