"""What else each token of a reading could be: the one-click corrections the app offers.

Most readings the model gets wrong are one token away from right: on CROHME 2016
(seventh release, beam 10) 157 of the 516 failures differ from the truth in one
position only, mostly look-alikes (`C`/`c`, `X`/`x`, `^`/`_`), and for 141 of them the
right token is among the five that the model itself ranks next at that position
(`benchmarks/token_fixes.py`). So each token carries the model's next choices at its
position, with their probabilities, given the tokens before it.
"""

from __future__ import annotations

import numpy as np

from model.syntax import RULE_TOKENS, broken_rule
from model.vocab import Vocabulary


def token_replacements(
    tokens: list[str], probs: np.ndarray, vocab: Vocabulary, k: int = 5
) -> list[list[tuple[str, float]]]:
    """For each position of `tokens`, up to k other symbols, most probable first, as
    (token, probability) pairs.

    probs: [>= len(tokens), V] the model's next-token distribution at each position,
    teacher-forced on `tokens` left to right. However unlikely, the k best are offered: a
    confident misreading's fix is still the model's next choice. Special tokens, the token
    itself and swaps that would leave the reading ill-formed (an unclosed group,
    a script without its group; `model.syntax.broken_rule`) are not offered. A reading
    that already breaks a rule gets its alternatives unfiltered."""
    if probs.ndim != 2 or probs.shape[0] < len(tokens) or probs.shape[1] != len(vocab):
        raise ValueError(f"expected probabilities [>= {len(tokens)}, {len(vocab)}], got {list(probs.shape)}")
    check_syntax = broken_rule(tokens) is None
    first_symbol = len(vocab.tokens) - len(vocab.symbols)
    out: list[list[tuple[str, float]]] = []
    for i, token in enumerate(tokens):
        if check_syntax and token in ("{", "}"):
            out.append([])  # any other token there would unbalance the braces
            continue
        row = probs[i]
        order = np.argsort(-row, kind="stable")
        offered: list[tuple[str, float]] = []
        for j in order:
            if len(offered) == k:
                break
            candidate = vocab.tokens[j]
            if j < first_symbol or candidate == token:
                continue
            if check_syntax and (token in RULE_TOKENS or candidate in RULE_TOKENS):
                if broken_rule([*tokens[:i], candidate, *tokens[i + 1 :]]) is not None:
                    continue
            offered.append((candidate, float(row[j])))
        out.append(offered)
    return out
