"""HMER-MTL handwritten math recognizer: the network, its vocabulary and inference.

Names are imported lazily so that `model.prediction` (plain data) can be used,
by the Qt layer for instance, without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "HMER": "model.hmer",
    "Targets": "model.hmer",
    "bidirectional_targets": "model.hmer",
    "HMERConfig": "model.config",
    "RasterConfig": "model.config",
    "Vocabulary": "model.vocab",
    "UnknownTokenError": "model.vocab",
    "Recognizer": "model.recognizer",
    "Prediction": "model.prediction",
    "Alternative": "model.prediction",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")
