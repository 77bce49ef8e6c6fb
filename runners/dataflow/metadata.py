"""The Flex Template's parameters (``metadata.json``), written from the flags of ``audiotok tokenize``:
each parameter's help text is its flag's (the config field's docstring and default), and its
check is the flag's type or choices. Only the labels, the URL patterns and the choice of
parameters live here.

    python -m audiotok.runners.dataflow.metadata --write runners/dataflow/metadata.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from audiotok.pipelines import options
from audiotok.runners import profiles

NAME = "audiotok-tokenize"
DESCRIPTION = ("Audio corpus -> WebDataset token shards with an index (audiotok). Incremental: a rerun tokenizes "
               "only new or changed files.")
BUCKET_URL = r"^(gs|s3)://[^,]+$"
# The profiles a template launch may pick (the first is its default: flex_main.py).
TEMPLATE_PROFILES = ("dataflow", "dataflow-gpu")
_NUMBER = {int: r"^[0-9]+$", float: r"^[0-9]+(\.[0-9]+)?$"}


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One template parameter: a flag of ``audiotok tokenize``, under its destination name.

    Attributes:
        flag: the flag (``--batch-max-s`` becomes the parameter ``batch_max_s``).
        label: the short name the Dataflow console shows.
        regex: what the console accepts (default: from the flag's choices or type).
        example: appended to the help text.
    """

    flag: str
    label: str
    regex: str | None = None
    example: str = ""

    def to_json(self) -> dict:
        name = self.flag.lstrip("-").replace("-", "_")
        if self.flag == "--profile":
            help_text = "; ".join(f"{p}: {profiles.PROFILES[p].summary}" for p in TEMPLATE_PROFILES)
            help_text += f" (default {TEMPLATE_PROFILES[0]})"
            regex, optional = "^(" + "|".join(TEMPLATE_PROFILES) + ")$", True
        else:
            flag = options.find_flag(self.flag)
            help_text = flag.description(note=False)  # the command line's remarks (repeatable, ...) do not apply
            regex = self.regex or ("^(" + "|".join(flag.choices) + ")$" if flag.choices else
                                   _NUMBER.get(flag.value_type()))
            optional = self.flag != "--output"
        if self.example:
            help_text += f". Example: {self.example}"
        out = {"name": name, "label": self.label, "helpText": help_text}
        if optional:
            out["isOptional"] = True
        if regex:
            out["regexes"] = [regex]
        return out


PARAMETERS = (
    Parameter("--input", "Input pattern", BUCKET_URL, "gs://my-bucket/corpus/**"),
    Parameter("--manifest", "Manifest", BUCKET_URL),
    Parameter("--output", "Output folder", r"^(gs|s3)://.+$", "gs://my-bucket/tokens/encodec"),
    Parameter("--tokenizer", "Tokenizers", example="logmel,mfcc-kmeans[codebook=gs://b/k100.safetensors]"),
    Parameter("--profile", "Runner profile"),
    Parameter("--device", "Device", r"^(auto|cpu|cuda(:[0-9]+)?)$"),
    Parameter("--segmenter", "Segmenter"),
    Parameter("--segment-s", "Segment seconds"),
    Parameter("--batch-max-s", "Seconds of audio per batch"),
    Parameter("--autocast", "Mixed precision"),
    Parameter("--model-copies", "Model copies per worker"),
    Parameter("--torch-threads", "Torch threads per process (CPU)"),
    Parameter("--max-failure-fraction", "Max failure fraction"),
)


def metadata() -> dict:
    """The template's metadata, as ``gcloud dataflow flex-template build --metadata-file`` reads it."""
    return {"name": NAME, "description": DESCRIPTION, "parameters": [p.to_json() for p in PARAMETERS]}


def render() -> str:
    return json.dumps(metadata(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", metavar="PATH", help="write the metadata here (default: print it)")
    args = parser.parse_args(argv)
    if args.write:
        with open(args.write, "w", encoding="utf-8") as f:
            f.write(render())
    else:
        sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
