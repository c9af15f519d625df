"""The Qt-free parts of the app: ink document, settings, math readings."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hmer_desktop.ink import InkDocument
from hmer_desktop.mathinfo import TypesetError, read_math, typeset_png
from hmer_desktop.settings import Settings, SettingsStore


def _line(x0, y0, x1, y1, n=5):
    return np.column_stack([np.linspace(x0, x1, n), np.linspace(y0, y1, n)])


def test_every_edit_undoes_and_redoes():
    doc = InkDocument()
    seen = []
    doc.subscribe(lambda: seen.append(doc.version))
    a, b, c = _line(0, 0, 10, 0), _line(0, 10, 10, 10), _line(5, 0, 5, 20)
    for s in (a, b, c):
        doc.add_stroke(s)
    doc.erase([1])
    assert [s[0, 1] for s in doc.strokes] == [0, 0]
    doc.undo()
    assert [s[0, 1] for s in doc.strokes] == [0, 10, 0]  # b back in its place
    doc.clear()
    assert doc.is_empty()
    doc.undo()
    assert len(doc.strokes) == 3
    doc.undo()
    doc.undo()
    assert len(doc.strokes) == 1 and doc.can_redo()
    doc.redo()
    doc.redo()
    np.testing.assert_array_equal(doc.strokes[2][:, :2], c)
    doc.add_stroke(a)
    assert not doc.can_redo()  # a new edit drops the redo history
    assert seen == sorted(seen) and len(seen) == doc.version


def test_replace_all_is_one_undoable_step_and_pressure_defaults():
    doc = InkDocument()
    doc.add_stroke(_line(0, 0, 1, 1))
    doc.replace_all([_line(5, 5, 6, 6), np.array([[1.0, 2.0, 0.9]])])
    assert len(doc.strokes) == 2 and doc.strokes[0].shape[1] == 3 and doc.strokes[1][0, 2] == 0.9
    doc.undo()
    assert len(doc.strokes) == 1


def test_the_eraser_finds_strokes_near_a_point():
    doc = InkDocument()
    doc.add_stroke(_line(0, 0, 100, 0))
    doc.add_stroke(_line(0, 50, 100, 50))
    assert doc.strokes_near(50, 3, radius=5) == [0]
    assert doc.strokes_near(50, 25, radius=5) == []


def test_settings_round_trip_and_a_corrupt_file_falls_back_to_defaults(tmp_path):
    store = SettingsStore(tmp_path / "settings.json")
    store.save(Settings(beam_size=4, live=False, device="cpu"))
    assert store.load() == Settings(beam_size=4, live=False, device="cpu")
    (tmp_path / "settings.json").write_text("{ not json")
    broken = SettingsStore(tmp_path / "settings.json")
    assert broken.load() == Settings() and "could not be read" in broken.problem
    assert broken.reset() == Settings() and broken.problem is None
    assert json.loads((tmp_path / "settings.json").read_text())["beam_size"] == 10
    (tmp_path / "settings.json").write_text(json.dumps({"beam_size": 999, "device": "tpu", "unknown": 1}))
    assert SettingsStore(tmp_path / "settings.json").load() == Settings(beam_size=32, device="auto")


def test_math_readings_and_typesetting():
    assert read_math("1 + 2 \\times 3").value == "7"
    eq = read_math("x ^ { 2 } = y")
    assert eq.ok and "<msup>" in eq.mathml
    bad = read_math("\\frac { } { }")
    assert not bad.ok and "cannot read" in bad.error
    assert typeset_png("\\sum \\limits _ { i } i").startswith(b"\x89PNG")
    with pytest.raises(TypesetError, match="cannot typeset"):
        typeset_png("x ^ { 2")


def test_latex_is_compacted_for_mathtext():
    from hmer_desktop.mathinfo import compact

    assert compact("\\frac { x } { x } = x ^ { 2 }") == "\\frac{x}{x}=x^{2}"
    assert compact("2 \\pi r + \\sin x") == "2\\pi r+\\sin x"  # a command word keeps its space before a letter
