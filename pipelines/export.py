"""``audiotok export OUT --format lhotse-shar -o DIR``: a copy of a dataset in another format.

``lhotse-shar``: a Lhotse Shar directory (``cuts.NNNNNN.jsonl.gz`` plus one
``<field>.NNNNNN.tar`` per stream) that ``lhotse.CutSet.from_shar(in_dir=DIR)`` reads.
Each sample becomes one recording-less ``MonoCut``:

* ``id`` = the sample key, ``start`` = 0, ``duration`` = the segment's ``duration_s``;
* one custom ``TemporalArray`` per stream, written by Lhotse's own Shar array writer
  (numpy, no lossy compression): ``codes`` int16 [K, T] (temporal dim 1), ``units`` int16 [T]
  and ``vectors`` float16 [T, D] (temporal dim 0), ``frame_shift`` = 1 / frame rate. Field
  names are the stream names with ``-`` turned into ``_`` (``mfcc-kmeans`` -> ``mfcc_kmeans``,
  read with ``cut.load_mfcc_kmeans()``); ``cut.custom["audiotok_streams"]`` maps them back;
* ``custom``: ``source_uri``, ``source_start_s``, ``source_end_s`` (where in the source file
  the segment lies);
* a supervision spanning the cut when the sample has manifest ``text``, ``speaker`` or
  ``language``.

Without a recording, Lhotse operations that need a sampling rate (``truncate``, ``pad``,
``load_audio``) are not available on these cuts; loading the arrays is.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from typing import Any, Mapping, Sequence

from audiotok.transforms import dataset, reader, storage

logger = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("lhotse-shar",)
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Lhotse reserves these cut attributes / Shar fields.
_RESERVED_FIELDS = frozenset({"cuts", "recording", "features", "custom", "supervisions", "id", "start", "duration",
                              "channel"})


def _lhotse():
    try:
        import lhotse
    except ImportError as e:
        raise ImportError("exporting to Lhotse Shar needs lhotse: pip install 'audiotok[lhotse]' "
                          "(or pip install lhotse)") from e
    return lhotse


def lhotse_field_names(streams: Sequence[str]) -> dict[str, str]:
    """Stream name -> Lhotse field name (``-`` -> ``_``).

    Raises:
        ValueError: two streams map to one field, or a name Lhotse reserves.
    """
    fields: dict[str, str] = {}
    for name in streams:
        field = name.replace("-", "_")
        if not _FIELD.match(field) or field in _RESERVED_FIELDS:
            raise ValueError(f"stream {name!r} gives Lhotse field {field!r}, which is not allowed "
                             f"(an identifier other than {', '.join(sorted(_RESERVED_FIELDS))})")
        if field in fields.values():
            other = next(s for s, f in fields.items() if f == field)
            raise ValueError(f"streams {other!r} and {name!r} both become Lhotse field {field!r}")
        fields[name] = field
    return fields


def sample_to_cut(sample: reader.TokenSample, fields: Mapping[str, str], specs: Mapping[str, Mapping[str, Any]]):
    """One sample -> a recording-less ``lhotse.MonoCut`` with its streams attached in memory."""
    lhotse = _lhotse()
    meta = sample.meta
    duration = float(meta["duration_s"])
    source = meta.get("source", {})
    supervisions = []
    if any(meta.get(f) is not None for f in ("text", "speaker", "language")):
        supervisions.append(lhotse.SupervisionSegment(
            id=sample.key, recording_id=sample.key, start=0.0, duration=duration, channel=0,
            text=meta.get("text"), speaker=meta.get("speaker"), language=meta.get("language")))
    cut = lhotse.MonoCut(
        id=sample.key, start=0.0, duration=duration, channel=0, recording=None, supervisions=supervisions,
        custom={"source_uri": source.get("uri"), "source_start_s": meta.get("start_s"),
                "source_end_s": meta.get("end_s"), "audiotok_streams": {f: s for s, f in fields.items()}})
    for name, field in fields.items():
        spec = specs.get(name, {})
        rate = float(spec.get("frame_rate_hz") or 0.0)
        cut = cut.attach_tensor(field, sample.streams[name], frame_shift=1.0 / rate if rate else None,
                                temporal_dim=1 if spec.get("kind") == "codes" else 0)
    return cut


def export_lhotse_shar(output: str, out_dir: str, shard_size: int = 1000,
                       streams: Sequence[str] | None = None) -> dict[str, list[str]]:
    """Writes a dataset as a Lhotse Shar directory.

    Args:
        output: the audiotok dataset folder.
        out_dir: the Shar directory to write (created when local).
        shard_size: cuts per Shar shard.
        streams: the streams to export (default: all).

    Returns:
        Shar field -> the files written (``cuts`` included), as ``SharWriter.output_paths``.
    """
    _lhotse()
    from lhotse.shar import SharWriter

    index = dataset.read_index(output)
    specs = index.get("streams", {})
    names = list(specs) if streams is None else list(streams)
    unknown = [n for n in names if n not in specs]
    if unknown:
        raise ValueError(f"unknown stream(s) {', '.join(unknown)}; the dataset has: {', '.join(specs)}")
    fields = lhotse_field_names(names)
    storage.makedirs(out_dir)
    n = 0
    with SharWriter(out_dir, fields={f: "numpy" for f in fields.values()}, shard_size=shard_size) as writer:
        for sample in reader.read_samples(output, streams=names, index=index):
            writer.write(sample_to_cut(sample, fields, specs))
            n += 1
    logger.info("wrote %d cuts as Lhotse Shar under %s", n, out_dir)
    return writer.output_paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="audiotok export", description=__doc__.split("\n\n")[0])
    parser.add_argument("output", help="the dataset folder (holding index.json)")
    parser.add_argument("--format", required=True, choices=FORMATS, help="what to write")
    parser.add_argument("-o", "--out", required=True, help="the folder to write")
    parser.add_argument("--shard-size", dest="shard_size", type=int, default=1000,
                        help="cuts per Shar shard (default 1000)")
    parser.add_argument("--streams", default="", help="comma-separated streams to export (default: all)")
    args = parser.parse_args(argv)
    streams = [s for s in (x.strip() for x in args.streams.split(",")) if s] or None
    try:
        paths = export_lhotse_shar(args.output, args.out, args.shard_size, streams)
    except (ValueError, ImportError) as e:
        print(f"audiotok export: {e}", file=sys.stderr)
        return 2
    n_files = sum(len(v) for v in paths.values())
    print(f"audiotok export: {n_files} file(s) under {args.out}; read with "
          f"lhotse.CutSet.from_shar(in_dir={args.out!r})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
