"""The token vocabulary and the structure mapping of the auxiliary task.

A `Vocabulary` is a plain value object: build one with `Vocabulary.default()`
(the 110 CROHME symbols in the reference order, from assets/vocab.txt) or from
a checkpoint. There is no module-level instance.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from model.paths import asset_path

PAD, SOS, EOS, PLACEHOLDER = "<pad>", "<sos>", "<eos>", "<space>"
SPECIALS = (PAD, SOS, EOS, PLACEHOLDER)

# Tokens the auxiliary head keeps; every other symbol becomes PLACEHOLDER.
STRUCTURE_TOKENS = frozenset(
    ["{", "}", "^", "_", "\\frac", "\\sqrt", "[", "]", "+", "=", "-",
     "\\times", "\\cdot", "\\div", "\\geq", ">", "<"]
)  # fmt: skip


class UnknownTokenError(ValueError):
    """A LaTeX token that is not in the vocabulary."""

    def __init__(self, token: str, where: str = "") -> None:
        self.token = token
        self.where = where
        place = f" in {where}" if where else ""
        super().__init__(f"unknown symbol {token!r}{place}: not one of the 110 CROHME symbols")


class Vocabulary:
    def __init__(self, tokens: Sequence[str]) -> None:
        tokens = list(tokens)
        if tokens[:4] != list(SPECIALS):
            raise ValueError(f"a vocabulary must start with {SPECIALS}, got {tokens[:4]}")
        if len(set(tokens)) != len(tokens):
            raise ValueError("a vocabulary must not repeat a token")
        self.tokens: tuple[str, ...] = tuple(tokens)
        self._index = {t: i for i, t in enumerate(self.tokens)}
        self.pad_id, self.sos_id, self.eos_id, self.placeholder_id = range(4)
        # structure_of[i] = id of token i in the auxiliary (structure-only) sequence
        self.structure_of: tuple[int, ...] = tuple(
            i if (i < 4 or t in STRUCTURE_TOKENS) else self.placeholder_id
            for i, t in enumerate(self.tokens)
        )

    @classmethod
    def default(cls) -> "Vocabulary":
        return cls.from_file(asset_path("vocab.txt"))

    @classmethod
    def from_file(cls, path: Path) -> "Vocabulary":
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        return cls([line.strip() for line in lines if line.strip()])

    def __len__(self) -> int:
        return len(self.tokens)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.tokens == other.tokens

    def __hash__(self) -> int:
        return hash(self.tokens)

    def __contains__(self, token: str) -> bool:
        return token in self._index

    @property
    def symbols(self) -> tuple[str, ...]:
        """The real symbols, without the four special tokens."""
        return self.tokens[4:]

    def encode(self, tokens: Iterable[str], where: str = "") -> list[int]:
        ids = []
        for t in tokens:
            i = self._index.get(t)
            if i is None or i < 4:
                raise UnknownTokenError(t, where)
            ids.append(i)
        return ids

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.tokens[int(i)] for i in ids]

    def unknown(self, tokens: Iterable[str]) -> list[str]:
        """The tokens of a sequence that are not symbols of this vocabulary."""
        return [t for t in tokens if self._index.get(t, 0) < 4]

    def structure(self, ids: Iterable[int]) -> list[int]:
        return [self.structure_of[int(i)] for i in ids]

    def structure_tokens(self, tokens: Iterable[str]) -> list[str]:
        return [t if t in STRUCTURE_TOKENS else PLACEHOLDER for t in tokens]
