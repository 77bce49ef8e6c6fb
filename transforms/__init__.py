"""The stages of the audiotok pipeline: pure functions plus thin Beam PTransforms.

One module per stage, in pipeline order: ``match`` -> ``decode`` -> ``segment`` ->
``tokenize`` -> ``shards``; ``failures`` holds dead-letter records and reason codes,
``tokenizers`` the tokenizer contract, its registry and one adapter per model family.
"""
