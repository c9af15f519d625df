from __future__ import annotations

import time

import numpy as np
import pytest

from model.config import RasterConfig
from model.rasterize import InkError, clean_strokes_indexed, rasterize
from tests.synthetic_ink import ink_for

CFG = RasterConfig(symbol_px=24, line_px=2.0, max_h=128, max_w=512)


@pytest.mark.parametrize("units", [1.0, 10.0, 1000.0])
def test_the_image_does_not_depend_on_the_inks_units_or_position(units):
    base = rasterize(ink_for("x ^ { 2 } + 1", size=1.0), CFG).image
    moved = [s * units + (123.0 * units, -77.0 * units) for s in ink_for("x ^ { 2 } + 1", size=1.0)]
    assert np.abs(rasterize(moved, CFG).image - base).max() < 1e-6


def test_a_typical_symbol_is_drawn_at_symbol_px():
    image = rasterize(ink_for("1 2 1", size=7.0), CFG).image  # every stroke one symbol tall
    rows = np.nonzero(image.max(axis=1) > 0.5)[0]
    assert abs((rows.max() - rows.min()) - CFG.symbol_px) <= CFG.line_px + 2


def test_transform_maps_ink_onto_the_drawn_pixels():
    strokes = ink_for("\\frac { a } { b }", size=50.0)
    raster = rasterize(strokes, CFG)
    for stroke in strokes:
        for x, y in np.round(raster.transform.to_image(stroke)).astype(int):
            assert raster.image[y - 1 : y + 2, x - 1 : x + 2].max() > 0.3
    point = np.array([[12.5, 40.0]])
    np.testing.assert_allclose(raster.transform.to_ink(raster.transform.to_image(point)), point)
    m = raster.transform.as_matrix()
    np.testing.assert_allclose((m @ [12.5, 40.0, 1.0])[:2], raster.transform.to_image(point)[0])


def test_pressure_and_extra_channels_are_ignored():
    strokes = ink_for("1 + 2")
    with_pressure = [np.column_stack([s, np.random.default_rng(0).uniform(0, 1, len(s))]) for s in strokes]
    assert np.array_equal(rasterize(strokes, CFG).image, rasterize(with_pressure, CFG).image)


def test_empty_ink_is_a_clear_error():
    with pytest.raises(InkError, match="empty"):
        rasterize([], CFG)
    with pytest.raises(InkError, match="no finite points"):
        rasterize([np.zeros((0, 2))], CFG)


def test_non_finite_points_are_dropped_and_all_non_finite_is_an_error():
    strokes = ink_for("1 + 2")
    dirty = [np.vstack([s, [[np.nan, 1.0], [np.inf, -np.inf]]]) for s in strokes]
    assert np.array_equal(rasterize(dirty, CFG).image, rasterize(strokes, CFG).image)
    with pytest.raises(InkError, match="no finite points"):
        rasterize([np.array([[np.nan, np.nan], [np.inf, 0.0]])], CFG)


def test_cleaning_reports_which_input_strokes_it_kept():
    # symbol marks name strokes by index, so whoever renumbers them needs exactly this
    empty = np.zeros((0, 2))
    all_nan = np.array([[np.nan, 1.0], [2.0, np.inf]])
    partly_nan = np.array([[0.0, 0.0], [np.nan, 1.0], [1.0, 1.0]])
    good = np.array([[3.0, 0.0], [4.0, 1.0]])
    strokes, kept = clean_strokes_indexed([empty, good, all_nan, partly_nan])
    assert kept == [1, 3]
    assert len(strokes) == 2
    np.testing.assert_array_equal(strokes[1], [[0.0, 0.0], [1.0, 1.0]])


def test_a_single_point_gives_a_valid_image():
    raster = rasterize([np.array([[5.0, 5.0]])], CFG)
    assert raster.image.shape[0] >= CFG.min_side and raster.image.shape[1] >= CFG.min_side
    assert raster.image.max() > 0.5 and np.isfinite(raster.image).all()


def test_a_huge_stroke_fits_the_size_limits():
    raster = rasterize([np.array([[0.0, 0.0], [1e9, 3e8]]), np.array([[0.0, 1.0], [1.0, 0.0]])], CFG)
    assert raster.image.shape[0] <= CFG.max_h and raster.image.shape[1] <= CFG.max_w
    assert raster.image.max() > 0.5


def test_a_hundred_thousand_points_render_without_hanging():
    t = np.linspace(0, 200 * np.pi, 100_000)
    spiral = np.column_stack([t * np.cos(t), t * np.sin(t)])
    start = time.monotonic()
    raster = rasterize([spiral], CFG)
    assert time.monotonic() - start < 10  # a hang guard, not a speed target
    assert raster.image.shape[0] <= CFG.max_h


def test_malformed_strokes_are_a_clear_error():
    with pytest.raises(InkError, match="x and y"):
        rasterize([np.array([1.0, 2.0, 3.0])], CFG)
