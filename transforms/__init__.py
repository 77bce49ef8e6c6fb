"""The stages of the audiotok pipeline: pure functions plus thin Beam PTransforms.

One module per stage, in pipeline order: ``match`` -> ``decode`` -> ``segment`` ->
``tokenize`` -> ``shards``; ``failures`` holds dead-letter records and reason codes,
``tokenizers`` the tokenizer contract, its registry and one adapter per model family.

The dataset side, which trainers import without Beam or torch: ``dataset`` (the layout on
disk, keys, the index, sample encoding), ``reader``, ``lm`` (vocabulary and sequence packing),
``card`` (statistics and plots), ``storage`` (fsspec).
"""
