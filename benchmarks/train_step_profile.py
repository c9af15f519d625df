"""Where a training step's time goes on a device: data loading, fresh input shapes,
repeated shapes, and the top operators by time (torch.profiler).

Written after the first lent-GPU run trained the paper preset at only ~60 images/s
on an H200: it separates the loader, the model and the cost of each new shape.

    python benchmarks/train_step_profile.py --data ../shared/datasets/crohme --preset paper --device cuda

The step timings use batches padded as --shape-multiple/--length-multiple say
(1 and 1 reproduce the first measurement, where nearly every batch was a new shape).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.config import HMERConfig  # noqa: E402
from model.hmer import HMER  # noqa: E402
from model.vocab import Vocabulary  # noqa: E402
from train.augment import AugmentConfig  # noqa: E402
from train.data import Batch, InkDataset, collate, load_split, nominal_size, size_batches  # noqa: E402
from train.trainer import autocast_context  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loader_rate(ds: InkDataset, batches: list[list[int]], vocab: Vocabulary, workers: int) -> float:
    """Batches per second the DataLoader delivers, with no training."""
    collate_fn = partial(collate, vocab=vocab)
    loader = DataLoader(ds, batch_sampler=batches, collate_fn=collate_fn, num_workers=workers)
    start, n = time.perf_counter(), 0
    for i, _ in enumerate(loader):
        if i == 2:  # worker start-up excluded
            start, n = time.perf_counter(), 0
        n += 1
    return n / (time.perf_counter() - start)


def distinct_shapes(items: dict, batches: list[list[int]], vocab: Vocabulary, shape: int, length: int) -> dict:
    """How many distinct input shapes one epoch's batches give the encoder and the ARM."""
    encoder, arm = set(), set()
    for b in batches:
        batch = collate([items[i] for i in b], vocab, shape_multiple=shape, length_multiple=length)
        n, _, h, w = batch.imgs.shape
        encoder.add((n, h, w))
        arm.add((n, batch.targets.tgt.shape[1], h // 16, w // 16))
    return {"batches": len(batches), "encoder_shapes": len(encoder), "arm_shapes": len(arm)}


def step_times(model: HMER, batches: list[Batch], device: torch.device, channels_last: bool) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    times = []
    for batch in batches:
        imgs = batch.imgs.contiguous(memory_format=torch.channels_last) if channels_last else batch.imgs
        sync(device)
        start = time.perf_counter()
        with autocast_context(device, True):
            main, aux = model(imgs, batch.masks, batch.targets.tgt)
            loss, _ = model.loss(main, aux, batch.targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def ms(times: list[float]) -> float:
    return 1000 * sorted(times)[len(times) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--preset", default="paper", choices=["paper", "small", "tiny"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--pixel-budget", type=int, default=3_200_000)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=12)
    parser.add_argument("--shape-multiple", type=int, default=32)
    parser.add_argument("--length-multiple", type=int, default=8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    cfg = HMERConfig.preset(args.preset)
    vocab = Vocabulary.default()
    examples, _ = load_split(args.data, "train", vocab, limit=3000)
    ds = InkDataset(examples, vocab, cfg.raster, AugmentConfig(), seed=0)
    sizes = [nominal_size(e.strokes, cfg.raster) for e in examples]
    index_batches = size_batches(sizes, args.pixel_budget, args.max_batch, seed=0, epoch=0)
    report: dict = {"device": str(device), "preset": args.preset, "workers": args.workers}
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)

    report["loader_batches_per_s"] = loader_rate(ds, index_batches[: 4 * args.steps], vocab, args.workers)
    print(f"loader ({args.workers} workers): {report['loader_batches_per_s']:.1f} batches/s", flush=True)

    items = {i: ds[i] for b in index_batches for i in b}  # rendered once, for every count and batch below
    for shape, length in ((1, 1), (args.shape_multiple, args.length_multiple)):
        counts = distinct_shapes(items, index_batches, vocab, shape, length)
        report[f"shapes_multiple_{shape}_{length}"] = counts
        print(f"one epoch of {len(examples)} expressions, sides x{shape}, length x{length}: {counts}", flush=True)

    n = args.steps
    pad = {"shape_multiple": args.shape_multiple, "length_multiple": args.length_multiple}
    batches = [collate([items[i] for i in b], vocab, **pad).to(device) for b in index_batches[: 2 * n + 5]]
    report["images_per_batch"] = sum(b.imgs.shape[0] for b in batches) / len(batches)
    torch.manual_seed(0)
    for channels_last in (True, False):
        model = HMER(cfg).to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        tag = "channels_last" if channels_last else "contiguous"
        step_times(model, batches[:5], device, channels_last)  # warm-up
        fresh = step_times(model, batches[5 : 5 + n], device, channels_last)  # shapes not seen yet
        again = step_times(model, batches[5 : 5 + n], device, channels_last)  # the same shapes again
        same = step_times(model, [batches[5]] * n, device, channels_last)  # one shape only
        report[tag] = {"fresh_ms": ms(fresh), "seen_again_ms": ms(again), "one_shape_ms": ms(same)}
        print(f"{tag}: step p50 fresh shapes {ms(fresh):.0f} ms, same shapes again {ms(again):.0f} ms, "
              f"one shape {ms(same):.0f} ms", flush=True)  # fmt: skip

    model = HMER(cfg).to(device).to(memory_format=torch.channels_last)
    step_times(model, batches[:3], device, True)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        step_times(model, batches[2 * n : 2 * n + 5], device, True)
    keys = ["self_cpu_time_total"] + (["self_device_time_total"] if device.type == "cuda" else [])
    for key in keys:
        table = prof.key_averages().table(sort_by=key, row_limit=14, max_name_column_width=40)
        print(table, flush=True)
        report[f"top_by_{key}"] = table
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
