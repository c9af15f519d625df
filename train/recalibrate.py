"""`hmer-train recalibrate-bn CKPT OUT --data DIR`: re-estimate a checkpoint's BatchNorm
statistics for its own weights.

Averaged weights (`hmer-train average`, and the trainer's EMA) come with averaged running
statistics, which are not the statistics of the averaged network: each source's were
measured on its own activations. This runs teacher-forced passes over training ink (both
directions, dropout off, weights untouched) and replaces every BatchNorm's running mean
and variance, the ARM's masked BatchNorm included, by their plain average over those
passes. `torch.optim.swa_utils.update_bn` does the same for models called with one
tensor, and puts the whole model in training mode (dropout on); this model takes ink,
masks and targets, and its ARM norm has its own training switch.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from model.arm import MaskedBatchNorm
from model.hmer import HMER
from train.data import Batch

log = logging.getLogger(__name__)


def recalibrate_batchnorm(model: HMER, batches: Iterable[Batch]) -> int:
    """Reset every BatchNorm's running statistics and estimate them anew, as the equal-weight
    mean over `batches`. Returns the number of images seen; the model is left in eval mode."""
    device = next(model.parameters()).device
    model.eval()  # dropout off: the statistics are those of the network that will run
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average instead of an exponential one
        m.train()
    for m in model.modules():
        if isinstance(m, MaskedBatchNorm):
            m.train()  # its training branch is the one that updates the statistics
    images = 0
    try:
        with torch.no_grad():
            for batch in batches:
                b = batch.to(device)
                model(b.imgs, b.masks, b.targets.tgt)
                images += b.imgs.shape[0]
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.eval()
    if images == 0:
        raise ValueError("no images to estimate BatchNorm statistics from")
    return images


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hmer-train recalibrate-bn", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("checkpoint", help="e.g. the output of `hmer-train average`")
    parser.add_argument("out", help="where to write the recalibrated checkpoint (may be the same file)")
    parser.add_argument("--data", required=True, help="CROHME-layout folder whose training ink is used")
    parser.add_argument("--split", default="train")
    parser.add_argument("--batches", type=int, default=300, help="batches of training ink (about 9 images each)")
    parser.add_argument("--config", default="cpu_small_canvas",
                        help="training config whose augmentation and batch sizes are used (the statistics "
                        "were learned on augmented ink)")  # fmt: skip
    parser.add_argument("--no-augment", action="store_true",
                        help="measure on the ink as written (for a model trained without augmentation)")
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--fp32", action="store_true", help="keep full-precision weights")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s: %(message)s")

    from model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from train.config import TrainConfig
    from train.data import InkDataset, collate, load_split, nominal_size, size_batches
    from train.export import shipping_meta

    if args.batches < 1:
        print("hmer-train recalibrate-bn: --batches must be at least 1", file=sys.stderr)
        return 2
    try:
        cfg = TrainConfig.load(args.config)
        model, vocab, meta = load_checkpoint(args.checkpoint)
        examples, _ = load_split(args.data, args.split, vocab)
    except (CheckpointError, OSError, ValueError) as e:
        print(f"hmer-train recalibrate-bn: {e}", file=sys.stderr)
        return 2
    if not examples:
        print(f"hmer-train recalibrate-bn: no expressions in {Path(args.data) / args.split}", file=sys.stderr)
        return 2
    raster = model.config.raster  # the checkpoint's own canvas, whatever the config says
    dataset = InkDataset(examples, vocab, raster, None if args.no_augment else cfg.augment, seed=args.seed)
    sizes = [nominal_size(e.strokes, raster) for e in examples]
    order = size_batches(sizes, cfg.data.pixel_budget, cfg.data.max_batch, args.seed, 0)[: args.batches]
    batches = (collate([dataset[i] for i in b], vocab) for b in order)
    images = recalibrate_batchnorm(model, batches)
    meta = shipping_meta(meta, not args.fp32, bn_recalibrated={"images": images, "split": args.split,
                                                                 "seed": args.seed})  # fmt: skip
    try:
        save_checkpoint(args.out, model, vocab, meta, half=not args.fp32)
    except OSError as e:
        print(f"hmer-train recalibrate-bn: cannot write {args.out}: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: BatchNorm statistics of {images} images of {args.split}")
    return 0
