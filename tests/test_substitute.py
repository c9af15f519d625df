"""Symbol renaming: every `x` of an expression becomes a `y` drawn by another writer, in the x's box."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from model.vocab import Vocabulary
from tests.helpers import synthetic_examples, tiny_train_config
from train.compose import side_by_side
from train.config import DataConfig
from train.data import Example, InkDataset, load_split
from train.substitute import CLASS_OF, Renamer, SymbolBank, substitute_symbols

UNMARKED_EXPRESSIONS = ["x + 2 = x", "1 - 3"]


def _square(x: float, y: float, size: float) -> np.ndarray:
    return np.array([[x, y], [x + size, y], [x + size, y + size], [x, y + size], [x, y]])


def _segmented(tokens: list[str], symbols: list[tuple[str, list[np.ndarray]]]) -> Example:
    """An example whose symbols are marked, as CROHME's traceGroups mark them."""
    strokes: list[np.ndarray] = []
    marked = []
    for token, ink in symbols:
        marked.append((token, tuple(range(len(strokes), len(strokes) + len(ink)))))
        strokes.extend(ink)
    return Example("e", strokes, tokens, writer="w", source="e.inkml", symbols=marked)


def _bank() -> SymbolBank:
    """One drawing of `a` (two strokes, 3 wide and 6 tall) and of `5`, far from the origin."""
    a = [np.array([[100.0, 200.0], [101.5, 203.0]]), np.array([[103.0, 200.0], [100.0, 206.0]])]
    five = [_square(50.0, 50.0, 4.0)]
    source = _segmented(["a", "5"], [("a", a), ("5", five)])
    return SymbolBank.from_examples([source])


def _x_plus_2_equals_x() -> Example:
    x1 = [np.array([[0.0, 0.0], [2.0, 2.0]]), np.array([[2.0, 0.0], [0.0, 2.0]])]
    plus = [np.array([[3.0, 1.0], [4.0, 1.0]]), np.array([[3.5, 0.5], [3.5, 1.5]])]
    two = [_square(5.0, -0.5, 3.0)]
    equals = [np.array([[9.0, 0.8], [10.0, 0.8]]), np.array([[9.0, 1.2], [10.0, 1.2]])]
    x2 = [np.array([[11.0, 0.0], [13.0, 2.0]]), np.array([[13.0, 0.0], [11.0, 2.0]])]
    return _segmented(["x", "+", "2", "=", "x"],
                      [("x", x1), ("+", plus), ("2", two), ("=", equals), ("x", x2)])  # fmt: skip


def test_the_bank_keeps_each_symbol_of_a_class_with_its_box_at_the_origin():
    bank = _bank()
    assert sorted(bank.ink) == ["5", "a"] and len(bank) == 2
    (a,) = bank.ink["a"]
    points = np.concatenate(a)
    np.testing.assert_allclose(points.min(axis=0), [0.0, 0.0])
    np.testing.assert_allclose(points.max(axis=0), [3.0, 6.0])


def test_a_type_is_renamed_everywhere_and_each_new_symbol_fills_the_old_ones_box():
    example = _x_plus_2_equals_x()
    bank = _bank()
    renamed = substitute_symbols(example, bank, np.random.default_rng(0), share=1.0)
    assert renamed is not None
    assert renamed.tokens == ["a", "+", "5", "=", "a"]  # both x's, and the 2, each in its class
    assert "x->a" in renamed.source and "2->5" in renamed.source
    # The operators' strokes are untouched; the x's two strokes each became a's two, the 2's one the 5's one.
    assert len(renamed.strokes) == len(example.strokes)
    kept = [s for s in renamed.strokes if any(s is t for t in example.strokes)]
    assert len(kept) == 4  # + and =
    # Each a is as tall as the x it replaces and centred on it; its width (3/6 of the
    # height) is inside the widening bound.
    first_a = np.concatenate(renamed.strokes[0:2])
    np.testing.assert_allclose(first_a.min(axis=0), [0.5, 0.0])
    np.testing.assert_allclose(first_a.max(axis=0), [1.5, 2.0])
    second_a = np.concatenate(renamed.strokes[-2:])
    np.testing.assert_allclose((second_a.min(axis=0) + second_a.max(axis=0)) / 2, [12.0, 1.0])
    five = renamed.strokes[4]
    np.testing.assert_allclose(five.min(axis=0), [5.0, -0.5])
    np.testing.assert_allclose(five.max(axis=0), [8.0, 2.5])


def test_every_occurrence_of_a_renamed_type_is_the_same_writers_drawing():
    example = _x_plus_2_equals_x()
    narrow = [np.array([[0.0, 0.0], [1.0, 4.0]])]
    square = [_square(0.0, 0.0, 4.0)]
    bank = SymbolBank.from_examples([_segmented(["a", "a", "c"], [("a", narrow), ("a", square), ("c", narrow)])])
    shapes = set()
    for seed in range(20):
        renamed = substitute_symbols(example, bank, np.random.default_rng(seed), share=1.0)
        first, second = renamed.strokes[0], renamed.strokes[-1]  # each a drawing of one stroke
        np.testing.assert_allclose(first - first.min(axis=0), second - second.min(axis=0))
        shapes.add((renamed.tokens[0], len(first)))
    assert len(shapes) == 3  # both a's and the c were drawn


def test_a_wide_symbol_put_in_a_thin_box_is_shrunk_to_the_widening_bound():
    one = [np.array([[0.0, 0.0], [0.0, 10.0]])]  # a `1`: a box of width 0
    example = _segmented(["1"], [("1", one)])
    wide_five = [_square(0.0, 0.0, 10.0)]
    bank = SymbolBank.from_examples([_segmented(["5"], [("5", wide_five)])])
    renamed = substitute_symbols(example, bank, np.random.default_rng(0))
    assert renamed is not None and renamed.tokens == ["5"]
    points = np.concatenate(renamed.strokes)
    width, height = points.max(axis=0) - points.min(axis=0)
    assert width == pytest.approx(1.4 * 0.6 * 10.0)  # MAX_WIDENING times 0.6 of the box's height
    assert height == pytest.approx(width)  # scaled alike both ways: the drawing keeps its shape
    np.testing.assert_allclose((points.min(axis=0) + points.max(axis=0)) / 2, [0.0, 5.0])


def test_a_type_is_not_renamed_to_one_the_expression_already_uses_nor_outside_its_class():
    example = _x_plus_2_equals_x()
    stroke = [np.array([[0.0, 0.0], [1.0, 2.0]])]
    # The bank offers only `2` (already used) for digits, a `+` (no class), a `y` (a
    # descender: not the x's class) and an `a`.
    drawn = [("2", [_square(0, 0, 1)]), ("+", stroke), ("y", stroke), ("a", stroke)]
    bank = SymbolBank.from_examples([_segmented(["2", "+", "y", "a"], drawn)])
    assert "+" not in bank.ink
    for seed in range(20):
        renamed = substitute_symbols(example, bank, np.random.default_rng(seed), share=1.0)
        assert renamed is not None and renamed.tokens == ["a", "+", "2", "=", "a"]


def test_nothing_is_renamed_when_the_marks_disagree_with_the_caption_or_share_a_stroke():
    bank = _bank()
    example = _x_plus_2_equals_x()
    # The caption has two x's but only one is marked, and the 2 is not marked at all.
    unmarked = replace(example, symbols=[s for s in example.symbols if s[0] not in ("2",)][:-1])
    assert substitute_symbols(unmarked, bank, np.random.default_rng(0)) is None
    # The 2's stroke also belongs to the `=`, so it cannot be redrawn alone; and the
    # caption's b's are not marked (the marks say x).
    shared = list(example.symbols)
    shared[3] = ("=", shared[3][1] + shared[2][1])
    entangled = replace(example, tokens=["b", "+", "2", "=", "b"], symbols=shared)
    assert substitute_symbols(entangled, bank, np.random.default_rng(0)) is None
    assert substitute_symbols(replace(example, symbols=None), bank, np.random.default_rng(0)) is None


def test_the_renamer_applies_to_its_share_of_draws_and_refuses_a_share_outside_0_1():
    bank = _bank()
    example = _x_plus_2_equals_x()
    assert Renamer(bank, 0.0)(example, np.random.default_rng(0)) is None
    assert Renamer(bank, 1.0)(example, np.random.default_rng(0)) is not None
    half = [Renamer(bank, 0.5)(example, np.random.default_rng(s)) is not None for s in range(200)]
    assert 70 < sum(half) < 130
    with pytest.raises(ValueError, match="renamed draws"):
        Renamer(bank, 1.5)
    with pytest.raises(ValueError, match="renamed"):
        DataConfig(renamed=-0.1)


def test_the_dataset_draws_renamed_expressions_reproducibly_with_their_captions():
    vocab = Vocabulary.default()
    raster = tiny_train_config().model.raster
    example = _x_plus_2_equals_x()
    narrow = [np.array([[0.0, 0.0], [1.0, 4.0]])]
    drawn = [("a", narrow), ("a", [_square(0.0, 0.0, 4.0)]), ("c", narrow), ("5", [_square(0.0, 0.0, 1.0)])]
    bank = SymbolBank.from_examples([_segmented(["a", "a", "c", "5"], drawn)])
    dataset = InkDataset([example] * 12, vocab, raster, augment=None, seed=4, rewrite=Renamer(bank, 0.5))

    def draws() -> list[tuple[bytes, list[str]]]:
        return [(image.tobytes(), vocab.decode(ids)) for image, ids, _ in (dataset[i] for i in range(12))]

    first = draws()
    assert draws() == first  # the same draw for the same (seed, epoch, index), captions included
    captions = {tuple(c) for _, c in first}
    assert tuple(example.tokens) in captions and len(captions) > 1  # some draws renamed, some not
    dataset.set_epoch(1)
    assert draws() != first  # another epoch, other draws
    _, plain_ids, _ = InkDataset([example], vocab, raster, augment=None, seed=4)[0]
    assert vocab.decode(plain_ids) == example.tokens


def test_a_symbol_with_an_empty_or_flat_occurrence_is_left_alone():
    bank = _bank()
    example = _x_plus_2_equals_x()
    strokes = list(example.strokes)
    strokes[0], strokes[1] = np.zeros((0, 2)), np.array([[0.0, 1.0], [np.nan, np.nan], [2.0, 1.0]])  # the first x
    damaged = replace(example, strokes=strokes)
    for seed in range(10):
        renamed = substitute_symbols(damaged, bank, np.random.default_rng(seed), share=1.0)
        assert renamed is not None and renamed.tokens == ["x", "+", "5", "=", "x"]  # the 2 still renamed


def test_the_trainer_renames_when_its_config_asks(tmp_path):
    from train.trainer import Trainer

    examples = synthetic_examples(UNMARKED_EXPRESSIONS) + [_x_plus_2_equals_x(), *_bank_sources()]
    cfg = tiny_train_config(max_steps=1)
    trainer = Trainer(replace(cfg, data=replace(cfg.data, renamed=1.0)), data_dir=tmp_path, out_dir=tmp_path / "r",
                      train_examples=examples, val_examples=[], show_progress=False)  # fmt: skip
    assert isinstance(trainer.train_set.rewrite, Renamer)
    assert sorted(trainer.train_set.rewrite.bank.ink) == ["2", "5", "a", "x"]
    off = Trainer(cfg, data_dir=tmp_path, out_dir=tmp_path / "o", train_examples=examples, val_examples=[],
                  show_progress=False)  # fmt: skip
    assert off.train_set.rewrite is None


def _empty_strokes_first(example: Example) -> Example:
    """`example` as raw InkML can hold it: an empty trace and one of NaN points before
    its ink, with the marks pointing past them."""
    junk = [np.array([]), np.array([[np.nan, np.nan], [np.nan, 1.0]])]
    marks = [(token, tuple(i + 2 for i in indices)) for token, indices in example.symbols]
    return replace(example, strokes=junk + example.strokes, symbols=marks)


@pytest.mark.parametrize("compose", ["side_by_side", "as_fraction"])
def test_a_composed_pair_keeps_both_parts_marks_so_it_can_be_renamed(compose):
    from train import compose as composing

    a = _empty_strokes_first(_x_plus_2_equals_x())
    b = _segmented(["x", "-", "1"], [("x", [np.array([[0.0, 0.0], [4.0, 4.0]]), np.array([[4.0, 0.0], [0.0, 4.0]])]),
                                     ("-", [np.array([[5.0, 2.0], [7.0, 2.0]])]),
                                     ("1", [np.array([[8.0, 0.0], [8.0, 4.0]])])])  # fmt: skip
    pair = composing.side_by_side(a, b, 0.8) if compose == "side_by_side" else composing.as_fraction(a, b, 0.3, 0.2)
    assert [t for t, _ in pair.symbols] == ["x", "+", "2", "=", "x", "x", "-", "1"]
    # A's marks name its own strokes, counted without the two it had no ink in; B's
    # name its strokes, moved and scaled as one.
    for (token, indices), (_, old) in zip(pair.symbols[:5], _x_plus_2_equals_x().symbols):
        for i, j in zip(indices, old, strict=True):
            np.testing.assert_array_equal(pair.strokes[i], _x_plus_2_equals_x().strokes[j])
    b_marked = [pair.strokes[i] for _, indices in pair.symbols[5:] for i in indices]
    assert len(b_marked) == len(b.strokes)
    scale = np.ptp(b_marked[0][:, 0]) / np.ptp(b.strokes[0][:, 0])
    for mine, theirs in zip(b_marked, b.strokes):
        np.testing.assert_allclose(mine - mine[0], (theirs - theirs[0]) * scale)
    np.testing.assert_allclose(b_marked[0][0] - b_marked[2][0], (b.strokes[0][0] - b.strokes[2][0]) * scale)
    # Renaming x renames all three, in both parts.
    renamed = substitute_symbols(pair, _bank(), np.random.default_rng(0), share=1.0)
    assert renamed is not None and renamed.tokens.count("a") == 3 and "x" not in renamed.tokens


def test_a_composed_symbol_left_without_ink_keeps_its_type_from_being_renamed():
    example = _x_plus_2_equals_x()
    strokes = list(example.strokes)
    strokes[4] = np.zeros((0, 2))  # the 2's only stroke holds no point
    pair = side_by_side(replace(example, strokes=strokes), synthetic_examples(["1 - 3"])[0], 0.8)
    assert ("2", ()) in pair.symbols
    for seed in range(10):
        renamed = substitute_symbols(pair, _bank(), np.random.default_rng(seed), share=1.0)
        assert renamed is not None and renamed.tokens[:5] == ["a", "+", "2", "=", "a"]


def test_the_bank_holds_the_real_expressions_drawings_not_composed_copies(tmp_path):
    from train.trainer import Trainer

    examples = [_x_plus_2_equals_x(), *_bank_sources(), *synthetic_examples(UNMARKED_EXPRESSIONS)]
    cfg = tiny_train_config(max_steps=1)
    cfg = replace(cfg, data=replace(cfg.data, renamed=1.0, composed=6))
    trainer = Trainer(cfg, data_dir=tmp_path, out_dir=tmp_path / "c", train_examples=examples, val_examples=[],
                      show_progress=False)  # fmt: skip
    composed = trainer.train_set.examples[len(examples):]
    assert len(composed) == 6 and any(e.symbols for e in composed)
    assert len(trainer.train_set.rewrite.bank) == len(SymbolBank.from_examples(examples))


def _bank_sources() -> list[Example]:
    a = [np.array([[0.0, 0.0], [1.0, 2.0]])]
    return [_segmented(["a", "5"], [("a", a), ("5", [_square(0, 0, 1)])])]


def test_every_class_holds_only_tokens_of_the_vocabulary():
    vocab = Vocabulary.default()
    for token in CLASS_OF:
        vocab.encode([token])


def test_crohme_symbols_are_found_and_renamed_captions_stay_in_the_vocabulary(crohme_dir):
    vocab = Vocabulary.default()
    examples, _ = load_split(crohme_dir, "train", vocab, limit=400)
    assert all(e.symbols for e in examples)  # every training file marks its symbols
    bank = SymbolBank.from_examples(examples)
    rng = np.random.default_rng(1)
    renamed = [substitute_symbols(e, bank, rng) for e in examples]
    done = [r for r in renamed if r is not None]
    assert len(done) > 0.9 * len(examples)  # the marks agree with the captions almost everywhere
    for original, new in zip(examples, renamed):
        if new is None:
            continue
        vocab.encode(new.tokens, where=new.source)
        assert len(new.tokens) == len(original.tokens) and new.tokens != original.tokens
        changed = {(a, b) for a, b in zip(original.tokens, new.tokens) if a != b}
        assert all(CLASS_OF[a] == CLASS_OF[b] for a, b in changed)
        assert len({a for a, _ in changed}) == len(changed)  # each type renamed one way, everywhere
