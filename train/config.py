"""Training configuration, read from TOML files in train/configs/."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from model.config import HMERConfig
from train.augment import AugmentConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass(frozen=True)
class DataConfig:
    train_split: str = "train"
    val_split: str = "2014"
    val_limit: int = 0  # validate on the first N expressions only (0 = all)
    pixel_budget: int = 800_000  # padded pixels per batch
    max_batch: int = 16
    num_workers: int = 0  # rendering processes; 0 renders in the training process
    shape_multiple: int = 1  # pad image sides to a multiple of this (GPU: reuse cuDNN's per-shape set-up)
    length_multiple: int = 1  # pad target lengths to a multiple of this (same reason: the ARM's convs)
    composed: int = 0  # add this many expressions made of two training ones side by side (train/compose.py)
    composed_fractions: float = 0.0  # the share of those written as a fraction, one over the other
    renamed: float = 0.0  # the share of draws whose symbols are renamed, x -> y (train/substitute.py)

    def __post_init__(self) -> None:
        for name in ("pixel_budget", "max_batch", "shape_multiple", "length_multiple"):
            if getattr(self, name) < 1:
                raise ValueError(f"[data] {name} must be at least 1, not {getattr(self, name)}")
        if self.composed < 0:
            raise ValueError(f"[data] composed must be 0 or more, not {self.composed}")
        if not 0.0 <= self.composed_fractions <= 1.0:
            raise ValueError(f"[data] composed_fractions must be in [0, 1], not {self.composed_fractions}")
        if not 0.0 <= self.renamed <= 1.0:
            raise ValueError(f"[data] renamed must be in [0, 1], not {self.renamed}")


@dataclass(frozen=True)
class OptimConfig:
    name: str = "sgd"  # "sgd" or "adamw"
    lr: float = 0.08
    momentum: float = 0.9
    weight_decay: float = 1e-4
    grad_clip: float = 0.0  # max gradient norm, 0 = off
    warmup_steps: int = 0  # linear warm-up from 0
    label_smoothing: float = 0.0  # main head: the truth gets 1 - eps, eps is spread over the vocabulary

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"[optim] label_smoothing must be in [0, 1), got {self.label_smoothing}")


@dataclass(frozen=True)
class ScheduleConfig:
    kind: str = "plateau"  # "plateau" (on validation ExpRate), "cosine" or "constant"
    factor: float = 0.25  # plateau: lr multiplier
    patience: int = 4  # plateau: validations without improvement before cutting lr
    min_lr: float = 1e-5


@dataclass(frozen=True)
class LoopConfig:
    max_epochs: int = 300
    max_steps: int = 0  # stop after this many optimizer steps (0 = no limit)
    max_minutes: float = 0.0  # stop this session (with a checkpoint) after this long (0 = no limit)
    budget_minutes: float = 0.0  # the run's whole training time, over resumes; a cosine schedule decays over it
    val_every_steps: int = 0  # validate every N steps (0 = once per epoch)
    checkpoint_minutes: float = 5.0
    log_every: int = 20
    seed: int = 7
    bf16: bool = True  # autocast in bfloat16 (CPU and CUDA)
    channels_last: bool = False
    threads: int = 0  # torch threads on CPU, 0 = all cores
    ema_decay: float = 0.0  # exponential moving average of weights, 0 = off
    final_beam: int = 10  # beam size of the evaluation at the end (0 = skip)

    def __post_init__(self) -> None:
        if self.seed < 0:  # numpy's generators, which draw the batches and augmentation, take none
            raise ValueError(f"[loop] seed must be 0 or more, not {self.seed}")


@dataclass(frozen=True)
class TrainConfig:
    model: HMERConfig = field(default_factory=HMERConfig.paper)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        d = dict(d)
        model_d = dict(d.pop("model", {}))
        preset = model_d.pop("preset", None)
        base = HMERConfig.preset(preset) if preset else HMERConfig.paper()
        model = base.replace(**model_d) if model_d else base
        sections = {"data": DataConfig, "optim": OptimConfig, "schedule": ScheduleConfig, "loop": LoopConfig}
        unknown = sorted(set(d) - set(sections) - {"augment"})
        if unknown:
            raise ValueError(f"unknown config section(s): {', '.join(unknown)}")
        kwargs: dict[str, Any] = {"model": model, "augment": AugmentConfig.from_dict(d.get("augment", {}))}
        for name, klass in sections.items():
            values = d.get(name, {})
            known = {f.name for f in fields(klass)}
            bad = sorted(set(values) - known)
            if bad:
                raise ValueError(f"unknown key(s) in [{name}]: {', '.join(bad)}")
            kwargs[name] = klass(**values)
        return cls(**kwargs)

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        path = Path(path)
        if not path.exists() and (CONFIG_DIR / path).exists():
            path = CONFIG_DIR / path
        if not path.exists() and (CONFIG_DIR / f"{path}.toml").exists():
            path = CONFIG_DIR / f"{path}.toml"
        with open(path, "rb") as f:
            return cls.from_dict(tomllib.load(f))
