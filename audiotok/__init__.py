"""audiotok: audio corpora -> token shards for speech language-model pretraining, on Apache Beam.

The repository's top-level folders are installed under this one root:

* ``audiotok.pipelines`` (``pipelines/``): the jobs and tools users run;
* ``audiotok.transforms`` (``transforms/``): the stages, tokenizers, and the dataset side (reader,
  vocabulary, card statistics) that trainers import without Beam;
* ``audiotok.runners`` (``runners/``): runner profiles, job servers, the Dataflow template.
"""

__version__ = "0.2.0"
