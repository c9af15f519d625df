"""Shared fixtures. Tests that need CROHME or the reference fixtures skip cleanly without them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# No test compiles the decoder step in the background behind the others' backs (a minute of
# CPU); tests/test_compiled_step.py compiles it on purpose.
os.environ.setdefault("HMER_COMPILED_STEP", "0")

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
REFERENCE = SHARED / "reference" / "hmer_mtl_small.pt"
CROHME = SHARED / "datasets" / "crohme"

# Expressions the tiny test model learns by heart (synthetic glyphs, no CROHME).
SYNTHETIC_EXPRESSIONS = ["1 + 2", "x ^ { 2 } = y", "\\frac { a } { b } - 3", "( a + b ) ^ { 2 }", "y - x = 1"]


@pytest.fixture(scope="session")
def reference_fixture():
    if not REFERENCE.exists():
        pytest.skip(f"reference fixture not found at {REFERENCE}")
    import torch

    return torch.load(REFERENCE, weights_only=True)


@pytest.fixture(scope="session")
def crohme_dir() -> Path:
    if not (CROHME / "captions").exists():
        pytest.skip(f"CROHME not found at {CROHME}")
    return CROHME


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny model trained until it reproduces SYNTHETIC_EXPRESSIONS exactly."""
    from tests.helpers import train_tiny

    out = tmp_path_factory.mktemp("tiny_run")
    return train_tiny(out, SYNTHETIC_EXPRESSIONS)
