"""HMER-MTL handwritten math recognizer: the network, its vocabulary and inference."""

from model.config import HMERConfig, RasterConfig
from model.hmer import HMER, Targets, bidirectional_targets
from model.vocab import UnknownTokenError, Vocabulary

__all__ = [
    "HMER",
    "HMERConfig",
    "RasterConfig",
    "Targets",
    "UnknownTokenError",
    "Vocabulary",
    "bidirectional_targets",
]
