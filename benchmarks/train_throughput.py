"""Training throughput (images/s) of a preset on this machine: fp32 vs bf16 autocast
vs bf16 + channels_last, measured side by side on the same batches, plus how
closely the bf16 loss matches fp32.

    python benchmarks/train_throughput.py --preset small --data ../shared/datasets/crohme --batches 12
    python benchmarks/train_throughput.py --config cpu_small_20px --data ... --pixel-budget 266000   # a training config's network and images
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.config import HMERConfig  # noqa: E402
from model.hmer import HMER  # noqa: E402
from model.vocab import Vocabulary  # noqa: E402
from train.augment import AugmentConfig  # noqa: E402
from train.data import Batch, InkDataset, collate, load_split, nominal_size, size_batches  # noqa: E402


def real_batches(data: Path, cfg: HMERConfig, vocab: Vocabulary, n: int, budget: int, max_batch: int) -> list[Batch]:
    examples, _ = load_split(data, "train", vocab, limit=2000)
    ds = InkDataset(examples, vocab, cfg.raster, AugmentConfig(), seed=0)
    sizes = [nominal_size(e.strokes, cfg.raster) for e in examples]
    chosen = size_batches(sizes, budget, max_batch, seed=0, epoch=0)[:n]
    return [collate([ds[i] for i in b], vocab) for b in chosen]


def synthetic_batches(cfg: HMERConfig, vocab: Vocabulary, n: int, h: int, w: int, b: int) -> list[Batch]:
    from model.hmer import bidirectional_targets

    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        imgs = (torch.rand(b, 1, h, w, generator=g) > 0.9).float()
        seqs = [torch.randint(4, len(vocab), (16,), generator=g).tolist() for _ in range(b)]
        out.append(Batch(imgs, torch.zeros(b, h, w, dtype=torch.bool), seqs, bidirectional_targets(seqs, vocab), []))
    return out


def measure(model: HMER, batches: list[Batch], bf16: bool, channels_last: bool) -> float:
    model.train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    images, seconds = 0, 0.0
    for i, batch in enumerate([batches[0], *batches]):  # the first is a warm-up
        imgs = batch.imgs.contiguous(memory_format=torch.channels_last) if channels_last else batch.imgs
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
            main, aux = model(imgs, batch.masks, batch.targets.tgt)
            loss, _ = model.loss(main, aux, batch.targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:
            seconds += time.perf_counter() - start
            images += batch.imgs.shape[0]
    return images / seconds


@torch.no_grad()
def loss_agreement(model: HMER, batches: list[Batch]) -> float:
    """Largest relative difference between bf16-autocast and fp32 losses (eval mode, same weights)."""
    model.eval()
    worst = 0.0
    for batch in batches[:4]:
        main, aux = model(batch.imgs, batch.masks, batch.targets.tgt)
        fp32, _ = model.loss(main, aux, batch.targets)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            main, aux = model(batch.imgs, batch.masks, batch.targets.tgt)
            bf16, _ = model.loss(main, aux, batch.targets)
        worst = max(worst, abs(float(bf16) - float(fp32)) / float(fp32))
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--preset", default="small", choices=["paper", "small", "tiny"])
    which.add_argument("--config", help="a training config (train/configs/NAME or a .toml path): its model and raster")
    parser.add_argument("--data", type=Path, help="CROHME-layout folder (real batches); default: synthetic")
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--pixel-budget", type=int, default=450_000)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.config:
        from train.config import TrainConfig

        cfg, name = TrainConfig.load(args.config).model, args.config
    else:
        cfg, name = HMERConfig.preset(args.preset), args.preset
    vocab = Vocabulary.default()
    if args.data:
        batches = real_batches(args.data, cfg, vocab, args.batches, args.pixel_budget, args.max_batch)
    else:
        batches = synthetic_batches(cfg, vocab, args.batches, 80, 320, 8)
    torch.manual_seed(0)
    state = HMER(cfg).state_dict()
    results = {}
    for variant, bf16, cl in [("fp32", False, False), ("bf16", True, False), ("bf16+channels_last", True, True)]:
        model = HMER(cfg)
        model.load_state_dict(state)
        results[variant] = measure(model, batches, bf16, cl)
        print(f"{name} {variant:>20}: {results[variant]:6.2f} images/s", flush=True)
    model = HMER(cfg)
    model.load_state_dict(state)
    agreement = loss_agreement(model, batches)
    best = max(results, key=results.get)
    report = {"preset": name, "threads": torch.get_num_threads(), "batches": len(batches),
              "images_per_s": results, "best": best, "speedup_best_vs_fp32": results[best] / results["fp32"],
              "bf16_loss_rel_diff": agreement, "data": "crohme" if args.data else "synthetic"}  # fmt: skip
    print(f"best: {best}, {report['speedup_best_vs_fp32']:.2f}x fp32; bf16 loss within {agreement:.2%} of fp32")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
