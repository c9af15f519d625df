"""New formulas from real ink by renaming symbols: every `x` of an expression becomes a `y`.

CROHME's 8,835 training expressions hold only 4,822 distinct formulas, and almost no
test formula is among them: a model can learn formulas by heart and then expects the
symbols it has seen together. CROHME's InkML marks which traces make each symbol
(`traceGroup`s), so a symbol can be swapped for another writer's drawing of another
symbol, scaled into the box the first one occupied, and the caption changes the same
way. The layout, the writer's spacing and everything else stay real.

A renamed symbol keeps its kind: digits become digits, small letters without
ascenders other such letters, capitals capitals, so that the new ink sits on the
line as the old did. A type is renamed everywhere in the expression at once (all its
`x`s become the same new `y`, drawn by one writer), to a type the expression does
not already use, so the formula stays a consistent renaming of a real one.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from train.data import Example

# Symbols whose boxes sit alike on the line: a symbol is only replaced by one of its own class.
SUBSTITUTION_CLASSES: tuple[tuple[str, ...], ...] = (
    ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9"),
    ("a", "c", "e", "m", "n", "o", "r", "s", "u", "v", "w", "x", "z", "\\alpha", "\\sigma"),  # x-height
    ("b", "d", "h", "k", "l"),  # ascenders
    ("g", "p", "q", "y"),  # descenders
    ("A", "B", "C", "E", "F", "G", "H", "L", "M", "N", "P", "R", "S", "T", "V", "X", "Y"),  # capitals
    ("\\sin", "\\cos", "\\tan"),  # written as words of about the same width
)
CLASS_OF: dict[str, tuple[str, ...]] = {token: members for members in SUBSTITUTION_CLASSES for token in members}

MAX_WIDENING = 1.4  # a new symbol may be at most this much wider than the box it fills (or than 0.6 of its height)


def _finite(strokes: list[np.ndarray]) -> list[np.ndarray]:
    """x, y of the finite points, strokes left empty dropped (raw InkML can hold either)."""
    out = [np.asarray(s, dtype=np.float64)[:, :2] for s in strokes]
    out = [s[np.isfinite(s).all(axis=1)] for s in out]
    return [s for s in out if len(s)]


def _box(strokes: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    points = np.concatenate([s[:, :2] for s in strokes])
    return points.min(axis=0), points.max(axis=0)


def _tall_box(strokes: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
    """The box of the finite points, or None when it has no height (a dot, an empty or
    mislabelled stroke): such a symbol can be neither drawn into nor taken as a drawing."""
    finite = _finite(strokes)
    if not finite:
        return None
    low, high = _box(finite)
    return (low, high) if high[1] - low[1] > 0 else None


@dataclass(frozen=True)
class SymbolBank:
    """Drawings of single symbols, by token: each a list of strokes whose box starts at (0, 0)."""

    ink: dict[str, list[list[np.ndarray]]]

    @classmethod
    def from_examples(cls, examples: list[Example]) -> SymbolBank:
        """Every symbol of a class in `examples` that is drawn with some height."""
        ink: dict[str, list[list[np.ndarray]]] = {}
        for example in examples:
            for token, indices in example.symbols or ():
                if token not in CLASS_OF:
                    continue
                strokes = _finite([example.strokes[i] for i in indices])
                box = _tall_box(strokes)
                if box is not None:
                    ink.setdefault(token, []).append([s - box[0] for s in strokes])
        return cls(ink)

    def __len__(self) -> int:
        return sum(len(v) for v in self.ink.values())


def _renameable(example: Example) -> dict[str, list[tuple[int, ...]]]:
    """Types of `example` that can be renamed: in a class, and with exactly as many
    marked symbols as the caption has tokens, none sharing a stroke with another symbol."""
    if not example.symbols:
        return {}
    tokens = Counter(example.tokens)
    groups: dict[str, list[tuple[int, ...]]] = {}
    owners = Counter(i for _, indices in example.symbols for i in indices)
    for token, indices in example.symbols:
        groups.setdefault(token, []).append(tuple(indices))
    return {
        token: found
        for token, found in groups.items()
        if token in CLASS_OF
        and len(found) == tokens[token]
        and all(indices and all(owners[i] == 1 for i in indices) for indices in found)
    }


def _placed(drawing: list[np.ndarray], low: np.ndarray, high: np.ndarray) -> list[np.ndarray]:
    """`drawing` scaled to the height of the box (low, high), no wider than MAX_WIDENING
    times its width (or 0.6 of its height, for thin boxes like a `1`), centred on it."""
    d_low, d_high = _box(drawing)
    width, height = d_high - d_low
    box_width, box_height = high - low
    scale = box_height / height
    if width > 0:
        scale = min(scale, MAX_WIDENING * max(box_width, 0.6 * box_height) / width)
    shift = (low + high) / 2 - (d_low + d_high) / 2 * scale
    return [s * scale + shift for s in drawing]


def substitute_symbols(example: Example, bank: SymbolBank, rng: np.random.Generator, share: float = 0.5) -> Example | None:
    """`example` with some of its symbol types renamed: each renameable type with
    probability `share`, at least one. None when no type can be renamed."""
    renameable = _renameable(example)
    used = set(example.tokens)
    choices: dict[str, list[str]] = {}
    for token in renameable:
        targets = [t for t in CLASS_OF[token] if t not in used and bank.ink.get(t)]
        if targets:
            choices[token] = targets
    if not choices:
        return None
    names = sorted(choices)
    chosen = [t for t in names if rng.random() < share] or [names[int(rng.integers(len(names)))]]
    renaming: dict[str, str] = {}
    new_strokes: dict[int, list[np.ndarray]] = {}  # first stroke of a replaced symbol -> its new strokes
    dropped: set[int] = set()
    for token in chosen:
        targets = [t for t in choices[token] if t not in renaming.values()]
        if not targets:
            continue
        target = targets[int(rng.integers(len(targets)))]
        drawings = bank.ink[target]
        drawing = drawings[int(rng.integers(len(drawings)))]  # one writer's drawing for every occurrence
        boxes = [_tall_box([example.strokes[i] for i in indices]) for indices in renameable[token]]
        if any(box is None for box in boxes):
            continue  # one occurrence cannot be redrawn: leave the type alone, or the caption would lie
        renaming[token] = target
        for indices, (low, high) in zip(renameable[token], boxes):
            new_strokes[indices[0]] = _placed(drawing, low, high)
            dropped.update(indices)
    if not renaming:
        return None
    strokes: list[np.ndarray] = []
    for i, stroke in enumerate(example.strokes):
        if i in new_strokes:
            strokes.extend(new_strokes[i])
        elif i not in dropped:
            strokes.append(stroke)
    described = ", ".join(f"{a}->{b}" for a, b in renaming.items())
    return Example(
        id=f"{example.id}~{described}",
        strokes=strokes,
        tokens=[renaming.get(t, t) for t in example.tokens],
        writer=None,
        source=f"{example.source or example.id} with {described}",
    )


@dataclass(frozen=True)
class Renamer:
    """The rewrite `InkDataset` applies per draw: a share `probability` of the draws of
    expressions with symbol segmentation come with some symbols renamed."""

    bank: SymbolBank
    probability: float
    share: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"the share of renamed draws must be in [0, 1], not {self.probability}")

    def __call__(self, example: Example, rng: np.random.Generator) -> Example | None:
        if not example.symbols or rng.random() >= self.probability:
            return None
        return substitute_symbols(example, self.bank, rng, self.share)
