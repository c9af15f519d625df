"""Rules every CROHME caption obeys, applied while decoding so no reading breaks them.

All 10,968 captions of train, 2014 and 2016 have balanced braces, put `{` after
every `^` and `_`, `{` or `[` after every `\\sqrt`, and give every `\\frac` whose
numerator is a group a denominator group right after it (`\\frac { a } { b }`; 11
captions write `\\frac \\theta { 2 i }` or `\\frac 1 2`, which stay allowed). Decoded
freely, the shipped model breaks the first rule in one failure out of nine (65 of
589 on 2016), and such a reading cannot be right; with the first three rules, 13 of
the sixth release's 994 failures on 2014 and 2016 still read a fraction without its
denominator. The rules act on the log-probabilities of each step: a token that would
break one gets -inf, so the search spends its beam on readings that can be right.

Right-to-left rows read the same rules mirrored: `}` opens a group, `{` closes
it, `^`, `_` may only come right after `{` (`\\sqrt` after `{` or `[`), and
`\\frac` may come right after a `{` only when that `{` closes a group that
began right after another group (the numerator, after the denominator).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from model.vocab import Vocabulary

# The only tokens `broken_rule` looks at: a swap between two other symbols never breaks a rule.
RULE_TOKENS = frozenset(["{", "}", "^", "_", "\\frac", "\\sqrt", "["])


def broken_rule(tokens: list[str]) -> str | None:
    """The first rule a finished reading breaks, in words, or None when it keeps them all."""
    groups: list[int | None] = []  # per open group: the position of its \frac, when it is a numerator
    for i, t in enumerate(tokens):
        after = tokens[i + 1] if i + 1 < len(tokens) else None
        if t == "{":
            groups.append(i - 1 if i > 0 and tokens[i - 1] == "\\frac" else None)
        elif t == "}":
            if not groups:
                return f"token {i + 1} closes a group that was never opened"
            frac = groups.pop()
            if frac is not None and after != "{":
                return f"\\frac at token {frac + 1} has a numerator but no denominator group"
        elif t in ("^", "_") and after != "{":
            return f"{t} at token {i + 1} is not followed by a {{ group"
        elif t == "\\sqrt" and after not in ("{", "["):
            return f"\\sqrt at token {i + 1} is not followed by {{ or ["
    return f"{len(groups)} group(s) left open" if groups else None


@dataclass
class SyntaxState:
    """Per-row decoding state: which open groups are marked (left to right: a fraction's
    numerator; right to left: a group that began right after another one closed), and
    what the last token did to them."""

    depth: Tensor  # [n] long: open groups
    reverse: Tensor  # [n] bool: a right-to-left row
    marked: Tensor  # [n] long: bit k set when the open group at depth k is marked (k < 63)
    marks_next: Tensor  # [n] bool: a group opened by the next token is marked
    closed: Tensor  # [n] long: the last token closed no group (0), an unmarked (1) or a marked one (2)

    def reorder(self, index: Tensor) -> SyntaxState:
        return SyntaxState(self.depth[index], self.reverse[index], self.marked[index], self.marks_next[index],
                           self.closed[index])  # fmt: skip


class SyntaxRules:
    """Masks next-token log-probabilities so that finished readings are well formed.

    Every rule depends only on the row's direction, its last token, whether a group is
    open and whether the last token closed a marked group, so the masks are precomputed
    tables and a search step costs a few lookups and a bit of arithmetic on the marks
    (about 35 small tensor operations per step for masking, advancing and reordering)."""

    def __init__(self, vocab: Vocabulary, device: torch.device | str = "cpu") -> None:
        def ids(*tokens: str) -> list[int]:
            return [vocab.encode([t])[0] for t in tokens if t in vocab]

        self.enabled = "{" in vocab and "}" in vocab
        if not self.enabled:  # a vocabulary without groups: nothing to keep balanced
            return
        v = len(vocab)
        (opener,), (closer,) = ids("{"), ids("}")
        frac = ids("\\frac")
        stops = [vocab.pad_id, vocab.sos_id, vocab.eos_id]
        # after[d, last, next]: `next` may not follow `last` in a row reading in direction d
        # (0 left to right, 1 right to left)
        after = torch.zeros(2, v, v, dtype=torch.bool)
        for tokens, allowed in ((ids("^", "_"), ids("{")), (ids("\\sqrt"), ids("{", "["))):
            if not tokens:
                continue
            not_allowed = torch.ones(v, dtype=torch.bool)
            not_allowed[allowed] = False
            after[0, tokens] |= not_allowed  # left to right: after a script only `{`, after a root `{` or `[`
            # right to left the same pairs read backwards: the token only right after one it allows
            after[1][:, tokens] |= not_allowed[:, None]
        # by_depth[d, open, next]: open = 0 when no group is open (nothing to close), 1 when
        # one is (no stopping)
        by_depth = torch.zeros(2, 2, v, dtype=torch.bool)
        by_depth[0, 0, closer] = by_depth[1, 0, opener] = True
        by_depth[:, 1, stops] = True
        # by_close[d, closed, next]: left to right, a closed numerator is followed by its
        # denominator's `{` and nothing else; right to left, `\frac` may follow a `{` only
        # when that `{` closed a numerator, which began right after the denominator closed
        by_close = torch.zeros(2, 3, v, dtype=torch.bool)
        by_close[0, 2] = True
        by_close[0, 2, opener] = False
        by_close[1, 1, frac] = True
        # depth_change[d, token]: +1 opens a group, -1 closes one
        depth_change = torch.zeros(2, v, dtype=torch.long)
        depth_change[0, opener] = depth_change[1, closer] = 1
        depth_change[0, closer] = depth_change[1, opener] = -1
        # marker[d, token]: a group opened right after this token is marked
        marker = torch.zeros(2, v, dtype=torch.bool)
        marker[0, frac] = True
        marker[1, opener] = True
        self.after, self.by_depth, self.by_close = after.to(device), by_depth.to(device), by_close.to(device)
        self.depth_change, self.marker = depth_change.to(device), marker.to(device)
        self.bits = (torch.ones(63, dtype=torch.long) << torch.arange(63)).to(device)  # bits[k] = 2**k

    def start(self, reverse: Tensor) -> SyntaxState:
        """reverse [n] bool: which rows read right to left."""
        def zeros() -> Tensor:  # one tensor per field: none may alias another
            return torch.zeros(reverse.shape, dtype=torch.long, device=reverse.device)

        return SyntaxState(zeros(), reverse, zeros(), torch.zeros_like(reverse), zeros())

    def mask(self, state: SyntaxState, last: Tensor, scores: Tensor) -> Tensor:
        """scores [n, V] (after the row's last token `last` [n]) with -inf on every token
        that would break a rule; a new tensor."""
        if not self.enabled:
            return scores
        direction = state.reverse.long()  # [n]
        forbid = (self.after[direction, last] | self.by_depth[direction, (state.depth > 0).long()]
                  | self.by_close[direction, state.closed])  # [n, V]  # fmt: skip
        return scores.masked_fill(forbid, float("-inf"))

    def advance(self, state: SyntaxState, tokens: Tensor) -> SyntaxState:
        """The state after each row appended `tokens` [n]."""
        if not self.enabled:
            return state
        direction = state.reverse.long()
        change = self.depth_change[direction, tokens]  # [n]
        opening, closing = change > 0, change < 0
        # the bit of the group being opened (one level deeper) or closed (this level); groups
        # deeper than 62 share the last bit, far beyond any handwritten expression
        bit = self.bits[(state.depth + opening).clamp_(max=62)]
        was_marked = (state.marked & bit) != 0
        # a bit is set when its group opens marked and cleared when it closes, so above the
        # depth every bit is clear and one xor does both
        flip = opening & state.marks_next | closing & was_marked
        return SyntaxState((state.depth + change).clamp_(min=0), state.reverse, state.marked ^ bit * flip,
                           self.marker[direction, tokens], closing * (1 + was_marked.long()))  # fmt: skip
