"""Configuration of the HMER-MTL network and of the rasterizer that feeds it.

Both travel inside every checkpoint, so a model is always run on images drawn
exactly the way it saw them in training.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class RasterConfig:
    """How ink becomes the model's input image (see model/rasterize.py)."""

    symbol_px: float = 40.0  # target height in pixels of a typical symbol (ink size normalization)
    line_px: float = 3.0  # stroke thickness in pixels at the target scale
    pad_px: int = 4  # blank border around the ink
    max_h: int = 256  # images taller than this are scaled down to fit
    max_w: int = 1024  # images wider than this are scaled down to fit
    min_side: int = 16  # smaller images are padded up; the encoder downsamples 16x

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RasterConfig":
        return _from_dict(cls, d)


@dataclass(frozen=True)
class HMERConfig:
    """Hyper-parameters of HMER-MTL. Defaults are the published configuration."""

    vocab_size: int = 114  # 110 CROHME symbols + pad/sos/eos/placeholder
    # encoder: DenseNet-B
    growth_rate: int = 24  # channels added by each bottleneck layer
    num_layers: int = 16  # bottleneck layers per dense block (3 blocks)
    reduction: float = 0.5  # channel compression of the transition layers
    encoder_dropout: float = 0.2
    # decoder: transformer with attention refinement
    d_model: int = 256
    nhead: int = 8
    num_decoder_layers: int = 3
    dim_feedforward: int = 1024
    dropout: float = 0.3
    dc: int = 32  # channels of the ARM's coverage convolution
    cross_coverage: bool = True  # ARM reads the previous layer's attention
    self_coverage: bool = True  # ARM reads the current layer's attention
    cbam: bool = True  # CBAM inside the ARM (HMER-MTL's addition to CoMER)
    max_len: int = 500  # longest sequence the word positional encoding covers
    # multi-task loss: lambda_1 * CE(main) + lambda_2 * CE(aux)
    lambda_main: float = 1.0
    lambda_aux: float = 1.0
    raster: RasterConfig = field(default_factory=RasterConfig)

    @classmethod
    def paper(cls) -> "HMERConfig":
        """Exactly the published HMER-MTL network (6,420,024 parameters)."""
        return cls()

    @classmethod
    def small(cls) -> "HMERConfig":
        """A CPU-friendly preset: narrower DenseNet and decoder, smaller images."""
        return cls(
            growth_rate=16,
            num_layers=8,
            d_model=192,
            dim_feedforward=768,
            dc=24,
            raster=RasterConfig(symbol_px=26.0, line_px=2.5, max_h=160, max_w=640),
        )

    @classmethod
    def tiny(cls) -> "HMERConfig":
        """For tests: trains in seconds on a CPU."""
        return cls(
            growth_rate=8,
            num_layers=2,
            d_model=32,
            nhead=4,
            num_decoder_layers=2,
            dim_feedforward=64,
            dc=8,
            dropout=0.0,
            encoder_dropout=0.0,
            raster=RasterConfig(symbol_px=16.0, line_px=2.0, max_h=64, max_w=256),
        )

    @classmethod
    def preset(cls, name: str) -> "HMERConfig":
        presets = {"paper": cls.paper, "small": cls.small, "tiny": cls.tiny}
        if name not in presets:
            raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(presets)}")
        return presets[name]()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "HMERConfig":
        d = dict(d)
        raster = RasterConfig.from_dict(d.pop("raster", {}))
        return _from_dict(cls, {**d, "raster": raster})

    def replace(self, **changes: Any) -> "HMERConfig":
        d = self.to_dict()
        if "raster" in changes and isinstance(changes["raster"], dict):
            changes["raster"] = {**d["raster"], **changes["raster"]}
        d.update(changes)
        return HMERConfig.from_dict(d)


def _from_dict(cls: type, d: dict[str, Any]) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
    return cls(**d)
