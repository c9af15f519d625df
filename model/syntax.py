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
    """Masks next-token log-probabilities so that finished readings are well formed."""

    def __init__(self, vocab: Vocabulary, device: torch.device | str = "cpu") -> None:
        def ids(*tokens: str) -> Tensor:
            return torch.tensor([vocab.encode([t])[0] for t in tokens if t in vocab], dtype=torch.long, device=device)

        self.enabled = "{" in vocab and "}" in vocab
        if not self.enabled:  # a vocabulary without groups: nothing to keep balanced
            return
        self.open, self.close = (int(i) for i in ids("{", "}"))
        self.stops = torch.tensor([vocab.pad_id, vocab.sos_id, vocab.eos_id], device=device)
        v = len(vocab)
        # (tokens, what must come right after them left to right, as a [V] "forbidden" row)
        self.followers: list[tuple[Tensor, Tensor]] = []
        for tokens, allowed in ((ids("^", "_"), ids("{")), (ids("\\sqrt"), ids("{", "["))):
            if len(tokens):
                forbidden = torch.ones(v, dtype=torch.bool, device=device)
                forbidden[allowed] = False
                self.followers.append((tokens, forbidden))

    def start(self, reverse: Tensor) -> SyntaxState:
        """reverse [n] bool: which rows read right to left."""
        return SyntaxState(torch.zeros(reverse.shape, dtype=torch.long, device=reverse.device), reverse)

    def mask(self, state: SyntaxState, last: Tensor, scores: Tensor) -> Tensor:
        """scores [n, V] (after the row's last token `last` [n]) with -inf on every token
        that would break a rule; a new tensor."""
        if not self.enabled:
            return scores
        n, v = scores.shape
        dev = scores.device
        forward, reverse = ~state.reverse, state.reverse
        forbid = torch.zeros(n, v, dtype=torch.bool, device=dev)
        closer = torch.where(reverse, self.open, self.close)  # [n]
        forbid[torch.arange(n, device=dev), closer] = state.depth == 0  # nothing to close
        forbid[:, self.stops] |= (state.depth > 0)[:, None]  # a group is still open
        for tokens, forbidden in self.followers:
            # left to right: after a script only `{`, after a root only `{` or `[`
            forbid |= (forward & torch.isin(last, tokens))[:, None] & forbidden[None, :]
            # right to left the same pairs read backwards: the token only right after one it allows
            may_precede = ~forbidden[last]  # [n]: `last` may follow these tokens in l2r order
            forbid[:, tokens] |= (reverse & ~may_precede)[:, None]
        return scores.masked_fill(forbid, float("-inf"))

    def advance(self, state: SyntaxState, tokens: Tensor) -> SyntaxState:
        """The state after each row appended `tokens` [n]."""
        if not self.enabled:
            return state
        opener = torch.where(state.reverse, self.close, self.open)
        closer = torch.where(state.reverse, self.open, self.close)
        depth = state.depth + (tokens == opener).long() - (tokens == closer).long()
        return SyntaxState(depth.clamp(min=0), state.reverse)
