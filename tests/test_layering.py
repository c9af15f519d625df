"""The layering the project relies on: the Qt layer never imports torch, and
model/ and train/ never import Qt (or hmer_desktop)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

QT_MODULES = ["hmer_desktop.app", "hmer_desktop.main_window", "hmer_desktop.widgets.attention",
              "hmer_desktop.widgets.canvas", "hmer_desktop.widgets.results", "hmer_desktop.widgets.structure",
              "hmer_desktop.widgets.learn", "hmer_desktop.widgets.settings_dialog", "hmer_desktop.widgets.heat"]  # fmt: skip
CORE_MODULES = ["model.recognizer", "model.cli", "model.checkpoint", "model.beam", "model.image_input",
                "train.trainer", "train.cli", "train.evaluate", "train.finetune", "train.samples", "train.plot"]  # fmt: skip


def _imports(modules: list[str], forbidden: str) -> bool:
    code = f"import sys\nfor m in {modules!r}: __import__(m)\nprint({forbidden!r} in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={"QT_QPA_PLATFORM": "offscreen", "PATH": ""})  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip() == "True"


def test_the_qt_layer_never_imports_torch():
    assert not _imports(QT_MODULES, "torch")


def test_model_and_train_never_import_qt_or_the_app():
    assert not _imports(CORE_MODULES, "PySide6")
    assert not _imports(CORE_MODULES, "hmer_desktop")
