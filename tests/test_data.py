from __future__ import annotations

import zipfile

import numpy as np
import pytest

from model.inkml import inkml_text, write_inkml
from model.vocab import Vocabulary
from tests.synthetic_ink import ink_for
from train.data import InkDataset, collate, load_split, nominal_size, read_captions, size_batches
from train.augment import AugmentConfig
from model.config import RasterConfig
from model.rasterize import rasterize


def _write_split(folder, items):
    for name, latex in items:
        write_inkml(folder / f"{name}.inkml", ink_for(latex), f"${latex}$")


def test_malformed_files_are_reported_by_name_and_skipped(tmp_path):
    split = tmp_path / "s"
    _write_split(split, [("good", "1 + 2")])
    (split / "empty.inkml").write_bytes(b"")
    (split / "broken.inkml").write_text("<ink><trace>1 2")
    write_inkml(split / "unknown.inkml", ink_for("1 + 2"), "$\\oint x$")
    latin = inkml_text(ink_for("x"), "$x$").encode("utf-8").replace(b"$x$", b"$x$ \xe9\xe9")
    (split / "latin.inkml").write_bytes(latin)
    examples, report = load_split(tmp_path, "s", Vocabulary.default())
    assert [e.id for e in examples] == ["good"]
    unreadable = {name.rsplit("/", 1)[-1] for name, _ in report.unreadable}
    assert unreadable == {"empty.inkml", "broken.inkml"}
    bad = {name.rsplit("/", 1)[-1]: why for name, why in report.bad_label}
    assert "\\oint" in bad["unknown.inkml"] and "latin.inkml" in bad  # é is no CROHME symbol


def test_captions_take_precedence_and_prime_is_mapped(tmp_path):
    _write_split(tmp_path / "s", [("a", "1 + 2"), ("b", "x"), ("c", "y")])
    (tmp_path / "captions").mkdir()
    (tmp_path / "captions" / "s.txt").write_text("a\t1 + 2\nb\tx '\nmissing\t3\n")
    examples, report = load_split(tmp_path, "s", Vocabulary.default())
    assert {e.id: e.tokens for e in examples} == {"a": ["1", "+", "2"], "b": ["x", "\\prime"]}
    assert [n.rsplit("/", 1)[-1] for n in report.no_label] == ["c.inkml"] and report.no_file == ["missing"]
    assert read_captions(tmp_path / "captions" / "s.txt")["b"] == ["x", "\\prime"]


def test_a_zip_of_inkml_reads_like_a_folder(tmp_path):
    with zipfile.ZipFile(tmp_path / "z.zip", "w") as zf:
        zf.writestr("inner/a.inkml", inkml_text(ink_for("1 + 2"), "$1+2$"))
    examples, _ = load_split(tmp_path, "z", Vocabulary.default())
    assert [(e.id, e.tokens) for e in examples] == [("a", ["1", "+", "2"])]


def test_a_missing_split_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="split 'nope' not found"):
        load_split(tmp_path, "nope", Vocabulary.default())


def test_nominal_size_is_the_unaugmented_render_size():
    cfg = RasterConfig(symbol_px=20, max_h=80, max_w=300)
    for latex in ["1 + 2", "\\frac { a } { b }", "x ^ { 2 } = y"]:
        strokes = ink_for(latex, size=3.0)
        assert nominal_size(strokes, cfg) == rasterize(strokes, cfg).image.shape


def test_size_batches_respect_the_pixel_budget_and_cover_everything():
    rng = np.random.default_rng(0)
    sizes = [(int(h), int(w)) for h, w in zip(rng.integers(20, 120, 300), rng.integers(40, 600, 300))]
    batches = size_batches(sizes, pixel_budget=200_000, max_batch=12, seed=1, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(300))
    for b in batches:
        assert len(b) <= 12
        if len(b) > 1:
            assert max(sizes[i][0] for i in b) * max(sizes[i][1] for i in b) * len(b) <= 200_000
    assert batches != size_batches(sizes, 200_000, 12, seed=1, epoch=1)  # reshuffled each epoch
    assert batches == size_batches(sizes, 200_000, 12, seed=1, epoch=0)  # reproducible


def test_augmentation_is_reproducible_per_epoch_and_collate_pads_with_a_mask():
    from tests.helpers import synthetic_examples

    examples = synthetic_examples(["1 + 2", "x ^ { 2 } = y"])
    ds = InkDataset(examples, Vocabulary.default(), RasterConfig(symbol_px=20), AugmentConfig(rotate_deg=5), seed=3)
    a = ds[0][0]
    assert np.array_equal(a, ds[0][0])
    ds.set_epoch(1)
    assert not np.array_equal(a, ds[0][0]) or a.shape != ds[0][0].shape
    batch = collate([ds[0], ds[1]], Vocabulary.default())
    assert batch.imgs.shape[0] == 2 and batch.targets.tgt.shape[0] == 4
    h0, w0 = ds[0][0].shape
    assert not batch.masks[0, :h0, :w0].any() and batch.masks[0].sum() == batch.masks.shape[1] * batch.masks.shape[2] - h0 * w0


def test_elastic_warp_moves_points_smoothly_and_keeps_the_strokes():
    from train.augment import augment_strokes

    strokes = ink_for("x ^ { 2 } = y", size=10.0)
    cfg = AugmentConfig(scale=(1.0, 1.0), elastic=0.1)
    warped, _, _ = augment_strokes(strokes, cfg, np.random.default_rng(0))
    assert [len(s) for s in warped] == [len(s) for s in strokes]
    shift = np.concatenate([w - s for w, s in zip(warped, strokes)])
    assert 0 < np.abs(shift).max() < 0.5 * 10.0  # visible, but far less than a symbol
    # smooth: neighbouring pen samples move much less apart than they are apart (no zigzags)
    for w, s in zip(warped, strokes):
        step = np.linalg.norm(np.diff(s, axis=0), axis=1)
        change = np.linalg.norm(np.diff(w - s, axis=0), axis=1)
        assert (change <= 0.5 * step + 1e-9).all()
    same, _, _ = augment_strokes(strokes, AugmentConfig(scale=(1.0, 1.0)), np.random.default_rng(0))
    assert all(a is b for a, b in zip(same, strokes))


def test_shape_and_length_multiples_pad_a_batch_without_changing_what_it_teaches():
    import torch

    from model.config import HMERConfig
    from model.hmer import HMER

    from tests.helpers import synthetic_examples

    vocab = Vocabulary.default()
    examples = synthetic_examples(["x ^ { 2 }", "\\frac { a } { b } + 1"])
    ds = InkDataset(examples, vocab, RasterConfig(symbol_px=20), augment=None)
    items = [ds[0], ds[1]]
    plain = collate(items, vocab)
    padded = collate(items, vocab, shape_multiple=64, length_multiple=8)
    h, w = padded.imgs.shape[-2:]
    assert h % 64 == 0 and w % 64 == 0 and padded.targets.tgt.shape[1] % 8 == 0
    assert padded.targets.tgt.shape[1] > plain.targets.tgt.shape[1]
    assert padded.masks[:, plain.imgs.shape[2]:, :].all() and padded.masks[:, :, plain.imgs.shape[3]:].all()
    torch.manual_seed(0)
    model = HMER(HMERConfig.tiny()).eval()
    with torch.no_grad():
        loss_plain, _ = model.loss(*model(plain.imgs, plain.masks, plain.targets.tgt), plain.targets)
        longer = collate(items, vocab, length_multiple=8)  # only the length: exactly the same loss
        loss_longer, _ = model.loss(*model(longer.imgs, longer.masks, longer.targets.tgt), longer.targets)
        loss_padded, _ = model.loss(*model(padded.imgs, padded.masks, padded.targets.tgt), padded.targets)
    assert torch.allclose(loss_longer, loss_plain, rtol=1e-5)
    assert torch.allclose(loss_padded, loss_plain, rtol=0.05)
