"""Small builders shared by tests: synthetic examples, a tiny training run, a random
model's encoding of two images."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from model.config import HMERConfig
from model.vocab import Vocabulary
from tests.synthetic_ink import ink_for
from train.augment import AugmentConfig
from train.config import DataConfig, LoopConfig, OptimConfig, ScheduleConfig, TrainConfig
from train.data import Example


def synthetic_examples(expressions: list[str], copies: int = 1, wobble: float = 0.0) -> list[Example]:
    out = []
    for c in range(copies):
        for i, latex in enumerate(expressions):
            strokes = ink_for(latex, wobble=wobble, seed=100 * c + i)
            out.append(Example(f"syn{c}_{i}", strokes, latex.split(), writer="synthetic", source=f"syn{c}_{i}.inkml"))
    return out


def tiny_train_config(max_steps: int = 250, seed: int = 3, **loop) -> TrainConfig:
    return TrainConfig(
        model=HMERConfig.tiny(),
        data=DataConfig(val_split="", pixel_budget=10**7, max_batch=8),
        augment=AugmentConfig(enabled=False),
        optim=OptimConfig(name="adamw", lr=3e-3, weight_decay=0.0, grad_clip=1.0),
        schedule=ScheduleConfig(kind="constant"),
        loop=replace(LoopConfig(max_steps=max_steps, log_every=10, seed=seed, bf16=False, threads=1,
                                final_beam=0, checkpoint_minutes=60, max_epochs=10_000), **loop),
    )


def train_tiny(out: Path, expressions: list[str], max_steps: int = 250) -> Path:
    from train.trainer import Trainer

    examples = synthetic_examples(expressions)
    trainer = Trainer(tiny_train_config(max_steps), data_dir=out, out_dir=out, train_examples=examples,
                      val_examples=[], show_progress=False)
    trainer.run()
    return out / "last.pt"


def vocab() -> Vocabulary:
    return Vocabulary.default()


def random_tiny_encoding(seed: int):
    """A random tiny model (eval mode) and its encoding of two random images, the second
    padded on the right: (model, memory, mem_mask)."""
    import torch

    from model.hmer import HMER

    torch.manual_seed(seed)
    model = HMER(HMERConfig.tiny()).eval()
    imgs = torch.rand(2, 1, 48, 96)
    masks = torch.zeros(2, 48, 96, dtype=torch.bool)
    masks[1, :, 64:] = True
    with torch.no_grad():
        memory, mem_mask = model.encode(imgs, masks)
    return model, memory, mem_mask
