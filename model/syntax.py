"""Rules every CROHME caption obeys, applied while decoding so no reading breaks them.

All 10,968 captions of train, 2014 and 2016 have balanced braces, put `{` after
every `^` and `_`, and `{` or `[` after every `\\sqrt`. Decoded freely, the shipped
model breaks the first rule in one failure out of nine (65 of 589 on 2016), and such
a reading cannot be right. The rules act on the log-probabilities
of each step: a token that would break one gets -inf, so the search spends its
beam on readings that can be right.

Right-to-left rows read the same rules mirrored: `}` opens a group, `{` closes
it, and `^`, `_` may only come right after `{` (`\\sqrt` after `{` or `[`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from model.vocab import Vocabulary


def broken_rule(tokens: list[str]) -> str | None:
    """The first rule a finished reading breaks, in words, or None when it keeps them all."""
    depth = 0
    for i, t in enumerate(tokens):
        after = tokens[i + 1] if i + 1 < len(tokens) else None
        if t == "{":
            depth += 1
        elif t == "}":
            if depth == 0:
                return f"token {i + 1} closes a group that was never opened"
            depth -= 1
        elif t in ("^", "_") and after != "{":
            return f"{t} at token {i + 1} is not followed by a {{ group"
        elif t == "\\sqrt" and after not in ("{", "["):
            return f"\\sqrt at token {i + 1} is not followed by {{ or ["
    return f"{depth} group(s) left open" if depth else None


@dataclass
class SyntaxState:
    """Per-row decoding state: how many groups are open, and in which direction the row reads."""

    depth: Tensor  # [n] long
    reverse: Tensor  # [n] bool: a right-to-left row

    def reorder(self, index: Tensor) -> SyntaxState:
        return SyntaxState(self.depth[index], self.reverse[index])


class SyntaxRules:
    """Masks next-token log-probabilities so that finished readings are well formed.

    Every rule depends only on the row's direction, its last token and whether a group
    is open, so the masks are precomputed tables and a search step costs a few
    lookups (about 11 small tensor operations per step, from 49 computed anew)."""

    def __init__(self, vocab: Vocabulary, device: torch.device | str = "cpu") -> None:
        def ids(*tokens: str) -> list[int]:
            return [vocab.encode([t])[0] for t in tokens if t in vocab]

        self.enabled = "{" in vocab and "}" in vocab
        if not self.enabled:  # a vocabulary without groups: nothing to keep balanced
            return
        v = len(vocab)
        (opener,), (closer,) = ids("{"), ids("}")
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
        # depth_change[d, token]: +1 opens a group, -1 closes one
        depth_change = torch.zeros(2, v, dtype=torch.long)
        depth_change[0, opener] = depth_change[1, closer] = 1
        depth_change[0, closer] = depth_change[1, opener] = -1
        self.after, self.by_depth, self.depth_change = after.to(device), by_depth.to(device), depth_change.to(device)

    def start(self, reverse: Tensor) -> SyntaxState:
        """reverse [n] bool: which rows read right to left."""
        return SyntaxState(torch.zeros(reverse.shape, dtype=torch.long, device=reverse.device), reverse)

    def mask(self, state: SyntaxState, last: Tensor, scores: Tensor) -> Tensor:
        """scores [n, V] (after the row's last token `last` [n]) with -inf on every token
        that would break a rule; a new tensor."""
        if not self.enabled:
            return scores
        direction = state.reverse.long()  # [n]
        forbid = self.after[direction, last] | self.by_depth[direction, (state.depth > 0).long()]  # [n, V]
        return scores.masked_fill(forbid, float("-inf"))

    def advance(self, state: SyntaxState, tokens: Tensor) -> SyntaxState:
        """The state after each row appended `tokens` [n]."""
        if not self.enabled:
            return state
        depth = state.depth + self.depth_change[state.reverse.long(), tokens]
        return SyntaxState(depth.clamp(min=0), state.reverse)
