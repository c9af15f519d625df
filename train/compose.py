"""New training expressions made from two real ones: side by side, or one over the other as a fraction.

CROHME's 8,835 training expressions hold only 4,822 distinct formulas and almost no
test formula is among them, so a model can learn formulas by heart; and long
expressions are where it reads worst (it drops symbols). Writing expression B to
the right of expression A, at A's symbol size and on A's main line, makes a
formula the data never had, from real ink, whose caption is A's tokens then B's:
juxtaposition is valid LaTeX, and every token stays where the rules allow it.
Writing A over B with a bar between them makes `\frac { A } { B }`: the 2-D
structure the model must place whole expressions in, with more ink per caption.
"""

from __future__ import annotations

import numpy as np

from model.config import RasterConfig
from model.rasterize import clean_strokes_indexed, layout, symbol_size
from train.data import Example


def _main_line(strokes: list[np.ndarray]) -> float:
    """The y of an expression's main line: the median of its strokes' vertical centres,
    each weighted by its size squared, so that scripts (smaller, off the line) move it
    less than the symbols on the line, and parentheses (tall, centred on it) more."""
    centres = np.array([(s[:, 1].min() + s[:, 1].max()) / 2 for s in strokes])
    weights = np.array([np.ptp(s, axis=0).max() for s in strokes]) ** 2 + 1e-12
    order = np.argsort(centres)
    cumulative = np.cumsum(weights[order])
    return float(centres[order][np.searchsorted(cumulative, cumulative[-1] / 2)])


Marks = list[tuple[str, tuple[int, ...]]]


def _cleaned(example: Example, first: int) -> tuple[list[np.ndarray], Marks]:
    """`example`'s strokes as `clean_strokes` gives them, and its symbol marks renumbered
    to match from stroke index `first`, so a composed expression can still be renamed
    (train/substitute.py). Cleaning drops strokes with no finite point; a mark keeps its
    other strokes, and a symbol left with none stays marked with none, which keeps its
    type from being renamed rather than miscounted."""
    strokes, kept = clean_strokes_indexed(example.strokes)  # raises on ink it cannot use
    new_index = {old: first + new for new, old in enumerate(kept)}
    marks = [(t, tuple(new_index[i] for i in indices if i in new_index)) for t, indices in example.symbols or ()]
    return strokes, marks


def side_by_side(a: Example, b: Example, gap: float) -> Example:
    """B written `gap` symbol sizes to the right of A, scaled to A's symbol size and
    shifted onto A's main line, in A's ink units."""
    sa, marks_a = _cleaned(a, 0)
    sb, marks_b = _cleaned(b, len(sa))
    size_a = symbol_size(sa)
    scale = size_a / symbol_size(sb)
    sb = [s * scale for s in sb]
    right_of_a = max(float(s[:, 0].max()) for s in sa)
    left_of_b = min(float(s[:, 0].min()) for s in sb)
    shift = np.array([right_of_a + gap * size_a - left_of_b, _main_line(sa) - _main_line(sb)])
    return Example(
        id=f"{a.id}+{b.id}",
        strokes=sa + [s + shift for s in sb],
        tokens=list(a.tokens) + list(b.tokens),
        writer=None,
        source=f"composed: {a.source or a.id} + {b.source or b.id}",
        symbols=marks_a + marks_b,
    )


def as_fraction(a: Example, b: Example, gap: float, overhang: float) -> Example:
    """A over B as a fraction: B scaled to A's symbol size, both centred on a straight
    bar `overhang` symbol sizes longer than the wider of them on each side, each `gap`
    symbol sizes from it; in A's ink units. The bar is one stroke, as a person draws it."""
    sa, marks_a = _cleaned(a, 0)
    sb, marks_b = _cleaned(b, len(sa) + 1)  # after A's strokes and the bar
    size = symbol_size(sa)
    sb = [s * (size / symbol_size(sb)) for s in sb]

    def box(strokes: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        points = np.concatenate(strokes)
        return points.min(axis=0), points.max(axis=0)

    (a_low, a_high), (b_low, b_high) = box(sa), box(sb)
    half_width = max(a_high[0] - a_low[0], b_high[0] - b_low[0]) / 2 + overhang * size
    centre_x = (a_low[0] + a_high[0]) / 2
    bar_y = a_high[1] + gap * size  # y grows downwards, as in InkML and on screen
    sb = [s + np.array([centre_x - (b_low[0] + b_high[0]) / 2, bar_y + gap * size - b_low[1]]) for s in sb]
    bar = np.stack([np.linspace(centre_x - half_width, centre_x + half_width, 8), np.full(8, bar_y)], axis=1)
    return Example(
        id=f"{a.id}/{b.id}",
        strokes=sa + [bar] + sb,
        tokens=["\\frac", "{", *a.tokens, "}", "{", *b.tokens, "}"],
        writer=None,
        source=f"composed: {a.source or a.id} over {b.source or b.id}",
        symbols=marks_a + marks_b,
    )


def composed_examples(
    examples: list[Example],
    count: int,
    raster: RasterConfig,
    seed: int,
    max_tokens: int = 64,
    gap: tuple[float, float] = (0.6, 1.4),
    fractions: float = 0.0,
    fraction_gap: tuple[float, float] = (0.15, 0.5),
    fraction_overhang: tuple[float, float] = (0.05, 0.3),
) -> list[Example]:
    """`count` pairs of random `examples`, drawn with `seed`, each fitting the raster at
    its nominal symbol size (so none is shrunk) and at most `max_tokens` long: a share
    `fractions` of them written as fractions, the rest side by side. Fewer when the
    examples cannot make that many (e.g. all too long)."""
    if not 0.0 <= fractions <= 1.0:
        raise ValueError(f"the share of fractions must be in [0, 1], not {fractions}")
    if count <= 0 or len(examples) < 2:
        return []
    rng = np.random.default_rng([seed, 1729])
    out: list[Example] = []
    for _ in range(count * 20):  # draws that do not fit are redrawn, within a bound
        if len(out) == count:
            break
        i, j = rng.choice(len(examples), size=2, replace=False)
        a, b = examples[int(i)], examples[int(j)]
        # Drawn only when asked for, so that side-by-side runs keep their pairs from a seed.
        if fractions > 0 and rng.random() < fractions:
            if len(a.tokens) + len(b.tokens) + 5 > max_tokens:
                continue
            pair = as_fraction(a, b, float(rng.uniform(*fraction_gap)), float(rng.uniform(*fraction_overhang)))
        elif len(a.tokens) + len(b.tokens) > max_tokens:
            continue
        else:
            pair = side_by_side(a, b, float(rng.uniform(*gap)))
        transform, _, _ = layout(pair.strokes, raster)
        if transform.scale < raster.symbol_px / symbol_size(pair.strokes) * 0.999:
            continue  # the rasterizer would shrink it to fit: not what a person's long ink looks like
        out.append(pair)
    return out
