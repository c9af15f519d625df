"""Run by test_trainer under torchrun: a tiny DDP training on the gloo backend."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import SYNTHETIC_EXPRESSIONS  # noqa: E402
from tests.helpers import synthetic_examples, tiny_train_config  # noqa: E402
from train.trainer import Trainer  # noqa: E402


def main() -> None:
    out = Path(sys.argv[1])
    examples = synthetic_examples(SYNTHETIC_EXPRESSIONS, copies=2)
    trainer = Trainer(tiny_train_config(max_steps=6), data_dir=out, out_dir=out, device="cpu",
                      train_examples=examples, val_examples=examples[:4], show_progress=False)  # fmt: skip
    assert trainer.dist.world_size == 2
    metrics = trainer.validate()
    assert metrics["n"] == 4  # each rank decoded its share, the counts were summed
    trainer.run()
    # the run's weights are the same on every rank
    with torch.no_grad():
        checksum = torch.tensor([sum(float(p.double().sum()) for p in trainer.model.parameters())])
    gathered = [torch.zeros(1) for _ in range(2)]
    dist.all_gather(gathered, checksum.float())
    assert torch.equal(gathered[0], gathered[1]), gathered
    trainer.close()


if __name__ == "__main__":
    main()
