from __future__ import annotations

import pytest

from model.vocab import PLACEHOLDER, STRUCTURE_TOKENS, UnknownTokenError, Vocabulary
from tests.conftest import SHARED


def test_default_vocabulary_is_the_reference_one():
    vocab = Vocabulary.default()
    assert len(vocab) == 114 and len(vocab.symbols) == 110
    assert vocab.tokens[:4] == ("<pad>", "<sos>", "<eos>", "<space>")
    ref = SHARED / "reference" / "vocab.txt"
    if ref.exists():
        assert list(vocab.tokens) == ref.read_text().split()


def test_two_vocabularies_are_independent_values():
    a, b = Vocabulary.default(), Vocabulary.default()
    assert a == b and a is not b


def test_structure_mapping_keeps_only_structure_tokens():
    vocab = Vocabulary.default()
    ids = vocab.encode("\\frac { x ^ { 2 } } { \\sqrt { y } } + 3".split())
    assert vocab.decode(vocab.structure(ids)) == \
        "\\frac { <space> ^ { <space> } } { \\sqrt { <space> } } + <space>".split()  # fmt: skip
    assert len(STRUCTURE_TOKENS) == 17 and STRUCTURE_TOKENS <= set(vocab.tokens)
    for special in range(4):
        assert vocab.structure_of[special] == special
    assert vocab.structure_tokens(["x", "<", "\\geq"]) == [PLACEHOLDER, "<", "\\geq"]


def test_encode_decode_round_trip_and_unknown_symbol_error():
    vocab = Vocabulary.default()
    tokens = "\\int _ { 0 } ^ { \\infty } e ^ { - x } d x".split()
    assert vocab.decode(vocab.encode(tokens)) == tokens
    with pytest.raises(UnknownTokenError, match=r"'\\\\oint' in sample\.inkml"):
        vocab.encode(["x", "\\oint"], where="sample.inkml")
    with pytest.raises(UnknownTokenError):
        vocab.encode(["<eos>"])  # special tokens are not symbols
    assert vocab.unknown(["x", "\\oint", "<pad>"]) == ["\\oint", "<pad>"]


def test_a_malformed_vocabulary_is_refused():
    with pytest.raises(ValueError, match="must start with"):
        Vocabulary(["a", "b"])
    with pytest.raises(ValueError, match="repeat"):
        Vocabulary(["<pad>", "<sos>", "<eos>", "<space>", "x", "x"])
