"""The vocabulary spec and the sequence builder (transforms/lm.py): pure numpy, no files but vocab.json."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dataset_fixtures as fx
from audiotok.transforms import lm

STREAMS = fx.describe(fx.DEFAULT_SPECS)  # codec [4 x 1024], units [100], fbank vectors


def test_vocab_layout_specials_then_separators_then_codebooks():
    v = lm.build_vocab(STREAMS)
    assert v.specials == {"<|pad|>": 0, "<|bos|>": 1, "<|eos|>": 2, "<|empty|>": 3,
                          "<|stream:codec|>": 4, "<|stream:units|>": 5}
    codec, units = v.streams  # sorted by name
    assert (codec.name, codec.offset, codec.num_codebooks, codec.codebook_size) == ("codec", 6, 4, 1024)
    assert [codec.codebook_offset(k) for k in range(4)] == [6, 1030, 2054, 3078]
    assert (units.name, units.offset, units.size) == ("units", 6 + 4096, 100)
    assert v.size == 6 + 4096 + 100
    assert v.not_in_vocab == {"fbank": "vectors stream: no discrete ids"}
    assert v.token_name(1030 + 5) == "codec:k1:5"
    assert v.token_name(4102 + 99) == "units:99"
    with pytest.raises(ValueError, match="fbank.*vectors stream"):
        v.stream("fbank")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        v.token_name(v.size)


def test_vocab_order_and_errors():
    v = lm.build_vocab(STREAMS, order=["units", "codec"])
    assert [s.name for s in v.streams] == ["units", "codec"]
    assert v.stream("units").offset == 6 and v.stream("codec").offset == 106
    with pytest.raises(ValueError, match="known streams"):
        lm.build_vocab(STREAMS, order=["nope"])
    no_size = {"u": {"kind": "units", "frame_rate_hz": 50.0}}
    assert lm.build_vocab(no_size).not_in_vocab == {"u": "units stream without codebook_size"}
    assert lm.build_vocab({}).size == len(lm.SPECIAL_TOKENS)


def test_write_and_read_vocab_round_trip(tmp_path):
    index = {"streams": STREAMS}
    written = lm.write_vocab(str(tmp_path), index)
    d = json.loads((tmp_path / lm.VOCAB_NAME).read_text())
    assert d["format"] == lm.VOCAB_FORMAT and d["size"] == written.size
    assert d["streams"][0]["codebooks"][1] == {"index": 1, "size": 1024, "offset": 1030}
    assert d["streams"][0]["fingerprint"] == STREAMS["codec"]["fingerprint"]
    back = lm.read_vocab(str(tmp_path))
    assert back == written and back.fingerprint() == written.fingerprint() == d["fingerprint"]
    d["size"] += 1
    with pytest.raises(ValueError, match="size"):
        lm.VocabSpec.from_dict(d)


def test_flat_ids_and_range_checks():
    v = lm.build_vocab(STREAMS)
    codec = v.stream("codec")
    codes = np.array([[0, 1023], [5, 6], [7, 8], [9, 10]], dtype=np.int16)
    ids = lm.to_flat_ids(codes, codec)
    assert ids[:, 0].tolist() == [6, 1030 + 5, 2054 + 7, 3078 + 9]
    np.testing.assert_array_equal(lm.from_flat_ids(ids, codec), codes)
    with pytest.raises(ValueError, match="code 1024 outside"):
        lm.to_flat_ids(np.full((4, 2), 1024, dtype=np.int16), codec)
    with pytest.raises(ValueError, match=r"must be \[4, T\]"):
        lm.to_flat_ids(np.zeros((3, 2), dtype=np.int16), codec)
    with pytest.raises(ValueError, match="integers"):
        lm.to_flat_ids(np.zeros((4, 2), dtype=np.float32), codec)


def test_delay_pattern_is_musicgen_style():
    codes = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    delayed = lm.delay_pattern(codes, fill=-1)
    assert delayed.tolist() == [[1, 2, 3, -1, -1], [-1, 4, 5, 6, -1], [-1, -1, 7, 8, 9]]
    np.testing.assert_array_equal(lm.undelay_pattern(delayed), codes)
    assert lm.flatten_codes(codes, lm.INTERLEAVE).tolist() == [1, 4, 7, 2, 5, 8, 3, 6, 9]
    assert lm.flatten_codes(codes, lm.DELAY, empty_id=0).tolist() == [1, 0, 0, 2, 4, 0, 3, 5, 7, 0, 6, 8, 0, 0, 9]
    with pytest.raises(ValueError, match="unknown pattern"):
        lm.flatten_codes(codes, "zigzag")


def test_document_layout():
    v = lm.build_vocab(STREAMS)
    streams = {"units": np.array([3, 4], dtype=np.int16), "codec": np.array([[1], [2], [3], [4]], dtype=np.int16)}
    doc = lm.sample_to_document(streams, v, lm.SequenceConfig(("units", "codec")))
    assert doc.dtype == np.int32
    assert [v.token_name(int(i)) for i in doc] == [
        "<|bos|>", "<|stream:units|>", "units:3", "units:4",
        "<|stream:codec|>", "codec:k0:1", "codec:k1:2", "codec:k2:3", "codec:k3:4", "<|eos|>"]
    with pytest.raises(ValueError, match="no stream 'codec'"):
        lm.sample_to_document({"units": streams["units"]}, v, lm.SequenceConfig(("units", "codec")))
    with pytest.raises(ValueError, match="distinct"):
        lm.SequenceConfig(("units", "units"))


def test_pack_pads_only_at_the_end_and_resets_positions():
    docs = [np.arange(1, 6), np.arange(10, 13), np.arange(20, 27)]  # 5 + 3 + 7 = 15 tokens
    rows = list(lm.pack_documents(docs, context_len=6, pad_id=0))
    assert [r.tokens.tolist() for r in rows] == [[1, 2, 3, 4, 5, 10], [11, 12, 20, 21, 22, 23], [24, 25, 26, 0, 0, 0]]
    assert [r.document_ids.tolist() for r in rows] == [[0, 0, 0, 0, 0, 1], [1, 1, 2, 2, 2, 2], [2, 2, 2, -1, -1, -1]]
    assert [r.positions.tolist() for r in rows] == [[0, 1, 2, 3, 4, 0], [0, 1, 0, 1, 2, 3], [0, 1, 2, 0, 0, 0]]
    whole = list(lm.pack_documents(docs, context_len=6, pad_id=0, split_documents=False))
    # The 3-token document moves to a fresh row; the 7-token one cannot fit any row and is split.
    assert [r.tokens.tolist() for r in whole] == [[1, 2, 3, 4, 5, 0], [10, 11, 12, 20, 21, 22],
                                                  [23, 24, 25, 26, 0, 0]]
    assert [d.tolist() for d in lm.unpack_rows(whole)] == [d.tolist() for d in docs]


def test_mask_and_targets_stay_inside_documents():
    doc_ids = np.array([0, 0, 1, 1, -1])
    mask = lm.block_causal_mask(doc_ids)
    assert mask.tolist() == [[True, False, False, False, False],
                             [True, True, False, False, False],
                             [False, False, True, False, False],
                             [False, False, True, True, False],
                             [False, False, False, False, False]]
    targets = lm.next_token_targets(np.array([5, 6, 7, 8, 0]), doc_ids)
    assert targets.tolist() == [6, -100, 8, -100, -100]


@st.composite
def datasets(draw):
    """A few streams (units and K-codebook codes) and samples of them, with random T."""
    n_streams = draw(st.integers(1, 3))
    specs = {}
    for i in range(n_streams):
        if draw(st.booleans()):
            specs[f"s{i}"] = {"kind": "units", "codebook_size": draw(st.integers(1, 50))}
        else:
            specs[f"s{i}"] = {"kind": "codes", "num_codebooks": draw(st.integers(1, 5)),
                              "codebook_size": draw(st.integers(1, 50))}
    seed = draw(st.integers(0, 2**31))
    n_samples = draw(st.integers(1, 6))
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n_samples):
        sample = {}
        for name, d in specs.items():
            t = int(rng.integers(0, 12))
            shape = (t,) if d["kind"] == "units" else (d["num_codebooks"], t)
            sample[name] = rng.integers(0, d["codebook_size"], size=shape).astype(np.int16)
        samples.append(sample)
    order = draw(st.permutations(sorted(specs)))
    return specs, samples, tuple(order)


@settings(max_examples=60, deadline=None)
@given(datasets(), st.sampled_from(lm.PATTERNS), st.integers(1, 40), st.booleans(), st.booleans())
def test_pack_then_unpack_gives_back_the_codes(data, pattern, context_len, split_documents, bos_eos):
    specs, samples, order = data
    vocab = lm.build_vocab(specs)
    config = lm.SequenceConfig(order, pattern=pattern, bos=bos_eos, eos=bos_eos)
    docs = [lm.sample_to_document(s, vocab, config) for s in samples]
    rows = list(lm.pack_documents(docs, context_len, vocab.pad_id, split_documents))
    assert all(r.tokens.shape == (context_len,) for r in rows)
    assert all(((r.document_ids >= 0) | (r.tokens == vocab.pad_id)).all() for r in rows)
    back = lm.unpack_rows(rows)
    assert len(back) == len(samples)  # every document holds at least its separators
    for original, doc in zip(samples, back):
        decoded = lm.document_to_streams(doc, vocab, config)
        assert set(decoded) == set(order)
        for name in order:
            assert decoded[name].dtype == np.int16
            np.testing.assert_array_equal(decoded[name], original[name])
