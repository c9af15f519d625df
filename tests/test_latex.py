from __future__ import annotations

import pytest

from model.vocab import UnknownTokenError, Vocabulary
from train.latex import LatexError, tokenize, tokenize_checked


@pytest.mark.parametrize(
    "raw, tokens",
    [
        ("$x^2$", "x ^ { 2 }"),
        ("$37.4$", "3 7 . 4"),
        ("\\frac 1 2 + \\frac{a}{b}", "\\frac { 1 } { 2 } + \\frac { a } { b }"),
        ("\\sqrt[3]{x}", "\\sqrt [ 3 ] { x }"),
        ("{ { 2 \\sum { Y } } \\leq { \\mbox { g } + { L - \\theta } } }", "2 \\sum Y \\leq g + L - \\theta"),
        ("\\lim_{x \\to 0} \\left( x \\right)", "\\lim _ { x \\rightarrow 0 } ( x )"),
        ("a \\lt b \\le c \\ne d'", "a < b \\leq c \\neq d \\prime"),
        ("\\{ x \\}", "\\{ x \\}"),
        ("x_i^{2}", "x _ { i } ^ { 2 }"),
    ],
)
def test_raw_latex_becomes_caption_tokens(raw, tokens):
    assert tokenize(raw) == tokens.split()


@pytest.mark.parametrize("raw, message", [("x^{2", "missing"), ("x}", "unbalanced"), ("x^", "no argument"), ("$ $", "no symbols")])
def test_malformed_latex_is_a_clear_error(raw, message):
    with pytest.raises(LatexError, match=message):
        tokenize(raw)


def test_unknown_symbols_are_named():
    with pytest.raises(UnknownTokenError, match=r"\\oint.*label\.inkml"):
        tokenize_checked("\\oint x", Vocabulary.default(), where="label.inkml")
