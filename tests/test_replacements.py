"""The one-click corrections offered per token: the model's next choices at each position,
never a special token or the token itself, never a swap that breaks the reading's syntax."""

import numpy as np
import pytest

from model.replacements import token_replacements
from model.syntax import broken_rule
from model.vocab import Vocabulary


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return Vocabulary.default()


def _probs(vocab: Vocabulary, rows: list[dict[str, float]]) -> np.ndarray:
    """One row per position: the given tokens get their probability, the rest share what is left."""
    out = np.zeros((len(rows) + 1, len(vocab)), dtype=np.float32)
    for i, row in enumerate(rows):
        rest = (1.0 - sum(row.values())) / (len(vocab) - len(row))
        out[i] = rest
        for token, p in row.items():
            out[i, vocab.tokens.index(token)] = p
    out[-1] = 1.0 / len(vocab)
    return out


def test_offers_the_next_choices_best_first_without_specials_or_the_token_itself(vocab):
    tokens = ["C", "+", "x"]
    probs = _probs(
        vocab, [{"C": 0.6, "<eos>": 0.2, "c": 0.1, "G": 0.05}, {"+": 0.9, "t": 0.05}, {"x": 0.5, "X": 0.3}]
    )
    alts = token_replacements(tokens, probs, vocab, k=3)
    assert [t for t, _ in alts[0]][:2] == ["c", "G"]  # <eos> is more probable but is not a symbol
    assert alts[0][0][1] == pytest.approx(0.1)
    assert [t for t, _ in alts[1]][0] == "t" and alts[2][0] == ("X", pytest.approx(0.3))
    for token, offered in zip(tokens, alts):
        assert len(offered) == 3
        names = [t for t, _ in offered]
        assert token not in names and not set(names) & {"<pad>", "<sos>", "<eos>", "<space>"}
        assert [p for _, p in offered] == sorted((p for _, p in offered), reverse=True)


def test_swaps_that_would_break_the_syntax_are_not_offered(vocab):
    tokens = "x ^ { 2 } + y".split()
    probs = _probs(vocab, [
        {"x": 0.5, "{": 0.3, "X": 0.1},  # `{ ^ { 2 } + y` leaves a group open
        {"^": 0.5, "}": 0.2, "_": 0.2},  # a subscript instead is fine; `}` closes nothing
        {"{": 0.9, "(": 0.05},  # a brace is never swapped
        {"2": 0.5, "z": 0.3},
        {"}": 0.9, ")": 0.05},
        {"+": 0.5, "\\frac": 0.3, "-": 0.1},  # `\frac y` with no group is allowed by the rules
        {"y": 0.5, "^": 0.3, "Y": 0.1},  # a script at the end has no group
    ])  # fmt: skip
    alts = token_replacements(tokens, probs, vocab, k=2)
    assert [t for t, _ in alts[0]][0] == "X"
    assert [t for t, _ in alts[1]][0] == "_"
    assert alts[2] == [] and alts[4] == []
    assert [t for t, _ in alts[6]][0] == "Y"
    for i, offered in enumerate(alts):
        for t, _ in offered:
            assert broken_rule([*tokens[:i], t, *tokens[i + 1 :]]) is None, (i, t)


def test_a_reading_that_already_breaks_a_rule_gets_unfiltered_choices(vocab):
    tokens = "x ^ 2".split()  # no group after the script, as a free search may read
    probs = _probs(vocab, [{"x": 0.9}, {"^": 0.5, "{": 0.4}, {"2": 0.9}])
    alts = token_replacements(tokens, probs, vocab, k=1)
    assert alts[1] == [("{", pytest.approx(0.4))]


def test_probabilities_of_the_wrong_shape_are_refused(vocab):
    with pytest.raises(ValueError, match="expected probabilities"):
        token_replacements(["x", "y"], np.zeros((1, len(vocab))), vocab)
    with pytest.raises(ValueError, match="expected probabilities"):
        token_replacements(["x"], np.zeros((2, 10)), vocab)
