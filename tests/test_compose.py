"""Composed training expressions: two real ones written side by side or as a fraction."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from model.config import RasterConfig
from model.rasterize import layout, symbol_size
from tests.helpers import synthetic_examples, tiny_train_config
from train.compose import _main_line, as_fraction, composed_examples, side_by_side
from train.config import DataConfig
from train.data import Example

EXPRESSIONS = ["x ^ { 2 } + 1", "\\frac { a } { b }", "a + b = 3", "y _ { 1 }", "2 x", "( a - 1 )", "3"]


def _scaled(example: Example, factor: float, offset: tuple[float, float]) -> Example:
    """The same ink in other units, somewhere else: as another source writes it."""
    return replace(example, strokes=[s * factor + offset for s in example.strokes])


def test_the_second_expression_is_written_to_the_right_at_the_first_ones_size_and_line():
    a, b = synthetic_examples(["a + b", "x ^ { 2 } - 1"])
    b = _scaled(b, 7.5, (-300.0, 900.0))  # other units and another place: must not matter
    gap = 0.8
    pair = side_by_side(a, b, gap)
    assert pair.tokens == a.tokens + b.tokens
    assert pair.writer is None and a.id in pair.id and b.id in pair.id
    first, second = pair.strokes[: len(a.strokes)], pair.strokes[len(a.strokes):]
    for mine, theirs in zip(first, a.strokes):  # A is untouched
        np.testing.assert_array_equal(mine, theirs)
    size = symbol_size(a.strokes)
    assert symbol_size(second) == pytest.approx(size)
    right_of_a = max(s[:, 0].max() for s in first)
    left_of_b = min(s[:, 0].min() for s in second)
    assert left_of_b - right_of_a == pytest.approx(gap * size)
    assert _main_line(second) == pytest.approx(_main_line(first))


def test_the_main_line_follows_the_symbols_on_it_not_a_script():
    # "x" on the line y = 0 (symbols 1 tall) with a superscript "2" half as large above it
    x_strokes = [np.array([[0.0, -0.5], [1.0, 0.5]]), np.array([[0.0, 0.5], [1.0, -0.5]])]
    script = [np.array([[1.2, -1.4], [1.6, -1.4], [1.2, -0.9], [1.6, -0.9]]), np.array([[1.2, -1.0], [1.5, -1.3]])]
    assert _main_line(x_strokes + script) == pytest.approx(0.0)


def test_composed_expressions_are_reproducible_fit_the_raster_and_respect_the_token_limit():
    examples = synthetic_examples(EXPRESSIONS)
    raster = RasterConfig(max_h=160, max_w=640)
    pairs = composed_examples(examples, 12, raster, seed=5, max_tokens=12)
    assert len(pairs) == 12
    assert [p.tokens for p in composed_examples(examples, 12, raster, seed=5, max_tokens=12)] == [p.tokens for p in pairs]
    assert [p.tokens for p in composed_examples(examples, 12, raster, seed=6, max_tokens=12)] != [p.tokens for p in pairs]
    for pair in pairs:
        assert len(pair.tokens) <= 12
        transform, _, _ = layout(pair.strokes, raster)
        assert transform.scale == pytest.approx(raster.symbol_px / symbol_size(pair.strokes))  # not shrunk to fit


def test_no_pair_is_made_when_none_would_fit():
    examples = synthetic_examples(["a + b = 3", "x + y = 2"])
    narrow = RasterConfig(max_h=160, max_w=200)  # one expression fits, two side by side do not
    assert composed_examples(examples, 5, narrow, seed=0) == []
    assert composed_examples(examples[:1], 5, RasterConfig(), seed=0) == []
    assert composed_examples(examples, 0, RasterConfig(), seed=0) == []


def test_a_fraction_writes_the_first_expression_over_a_bar_and_the_second_under_it():
    a, b = synthetic_examples(["a + b = 3", "x ^ { 2 }"])
    b = _scaled(b, 0.01, (55.0, -40.0))  # other units and another place: must not matter
    pair = as_fraction(a, b, gap=0.3, overhang=0.2)
    assert pair.tokens == ["\\frac", "{", *a.tokens, "}", "{", *b.tokens, "}"]
    assert pair.writer is None and a.id in pair.id and b.id in pair.id
    first, bar, second = pair.strokes[: len(a.strokes)], pair.strokes[len(a.strokes)], pair.strokes[len(a.strokes) + 1:]
    for mine, theirs in zip(first, a.strokes):  # A is untouched
        np.testing.assert_array_equal(mine, theirs)
    size = symbol_size(a.strokes)
    assert symbol_size(second) == pytest.approx(size)
    top, under = np.concatenate(first), np.concatenate(second)
    assert np.ptp(bar[:, 1]) == 0  # one horizontal stroke
    assert bar[0, 1] - top[:, 1].max() == pytest.approx(0.3 * size)  # y grows downwards: A above the bar
    assert under[:, 1].min() - bar[0, 1] == pytest.approx(0.3 * size)  # and B below it
    wider = max(np.ptp(top[:, 0]), np.ptp(under[:, 0]))
    assert np.ptp(bar[:, 0]) == pytest.approx(wider + 0.4 * size)
    for part in (top, under):  # both centred on the bar
        assert (part[:, 0].min() + part[:, 0].max()) / 2 == pytest.approx(bar[:, 0].mean())


def test_a_share_of_the_composed_expressions_are_fractions_and_the_rest_keep_their_pairs():
    examples = synthetic_examples(EXPRESSIONS)
    raster = RasterConfig(max_h=256, max_w=1024)
    side_only = composed_examples(examples, 40, raster, seed=3, max_tokens=20)
    assert composed_examples(examples, 40, raster, seed=3, max_tokens=20, fractions=0.0)[0].id == side_only[0].id
    mixed = composed_examples(examples, 40, raster, seed=3, max_tokens=20, fractions=0.5)
    fractions = [p for p in mixed if " over " in p.source]
    assert len(mixed) == 40 and 8 <= len(fractions) <= 32
    for pair in fractions:
        assert pair.tokens[:2] == ["\\frac", "{"] and pair.tokens[-1] == "}" and len(pair.tokens) <= 20
        transform, _, _ = layout(pair.strokes, raster)
        assert transform.scale == pytest.approx(raster.symbol_px / symbol_size(pair.strokes))  # not shrunk to fit
    all_fractions = composed_examples(examples, 10, raster, seed=3, max_tokens=20, fractions=1.0)
    assert all(" over " in p.source for p in all_fractions)
    with pytest.raises(ValueError, match="share of fractions"):
        composed_examples(examples, 10, raster, seed=3, fractions=1.5)


def test_the_trainer_adds_the_composed_expressions_to_its_training_set(tmp_path):
    from train.trainer import Trainer

    examples = synthetic_examples(EXPRESSIONS)
    cfg = tiny_train_config(max_steps=1)
    cfg = replace(cfg, data=replace(cfg.data, composed=6))
    trainer = Trainer(cfg, data_dir=tmp_path, out_dir=tmp_path / "c", train_examples=examples, val_examples=[],
                      show_progress=False)  # fmt: skip
    assert len(trainer.train_set) == len(examples) + 6
    assert len(trainer.sizes) == len(examples) + 6
    added = trainer.train_set.examples[len(examples):]
    assert all(e.source.startswith("composed:") for e in added)
    image, ids, _ = trainer.train_set[len(examples)]  # renders and encodes like any example
    assert image.ndim == 2 and len(ids) == len(added[0].tokens)


def test_a_negative_count_of_composed_expressions_is_refused():
    with pytest.raises(ValueError, match="composed"):
        DataConfig(composed=-1)
