"""`hmer-train export`: turn a training checkpoint into the file the app ships;
`hmer-train average`: the same, from the mean of several checkpoints' weights.

The weights are stored in half precision (restored to fp32 on load), which
halves the file; `hmer-eval` on the exported file is what the model card reports.
Averaging only makes sense for runs that share a starting point (continuations
of one checkpoint), whose weights lie in one basin.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def export(source: str | Path, out: str | Path, half: bool = True) -> dict:
    model, vocab, meta = load_checkpoint(source)
    meta = shipping_meta(meta, half, exported_from=str(source))
    save_checkpoint(out, model, vocab, meta, half=half)
    return meta


def shipping_meta(meta: dict, half: bool, **origin: object) -> dict:
    """The metadata a shipped file keeps: the training config stays in the run folder
    (the config that matters is the model's), plus where and when it was written."""
    meta = {k: v for k, v in meta.items() if k != "train_config"}
    return meta | origin | {"exported_at": time.strftime("%Y-%m-%d %H:%M:%S"),
                            "weights_dtype": "float16" if half else "float32"}  # fmt: skip


def average(sources: list[str | Path], out: str | Path, half: bool = True) -> dict:
    """Write the element-wise mean of the checkpoints' weights (BatchNorm statistics
    included) to `out`. All must have the first one's vocabulary and model config."""
    if len(sources) < 2:
        raise ValueError("averaging needs at least two checkpoints")
    model, vocab, first_meta = load_checkpoint(sources[0])
    metas = [first_meta]
    total = {k: v.double() for k, v in model.state_dict().items() if v.is_floating_point()}
    for source in sources[1:]:
        other, _, other_meta = load_checkpoint(source, expect_vocab=vocab, expect_config=model.config)
        metas.append(other_meta)
        for k, v in other.state_dict().items():
            if k in total:
                total[k] += v.double()
    # integer buffers (BatchNorm's batch counters) keep the first checkpoint's values
    model.load_state_dict({k: (v / len(sources)).float() for k, v in total.items()}, strict=False)
    # Only what all sources agree on describes the mean (the splits, say); a step or a
    # validation score belongs to one source, so each source's own record is kept apart.
    metas = [{k: v for k, v in m.items() if k != "train_config"} for m in metas]
    shared = {k: v for k, v in metas[0].items() if all(k in m and m[k] == v for m in metas[1:])}
    meta = shipping_meta(shared, half, averaged_from=[str(s) for s in sources], sources=metas)
    save_checkpoint(out, model, vocab, meta, half=half)
    return meta


def average_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hmer-train average",
                                     description="Write the mean of several checkpoints' weights (continuations "
                                     "of one starting point) as one file for shipping.")  # fmt: skip
    parser.add_argument("out", help="where to write the averaged file")
    parser.add_argument("checkpoints", nargs="+", help="two or more checkpoints with the same model and vocabulary")
    parser.add_argument("--fp32", action="store_true", help="keep full-precision weights")
    args = parser.parse_args(argv)
    try:
        meta = average(args.checkpoints, args.out, half=not args.fp32)
    except (CheckpointError, OSError, ValueError) as e:
        print(f"hmer-train average: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1e6:.1f} MB, {meta['weights_dtype']}, "
          f"the mean of {len(args.checkpoints)} checkpoints)")  # fmt: skip
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hmer-train export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("checkpoint", help="a run's best.pt (or any project checkpoint)")
    parser.add_argument("out", help="where to write the shipped file, e.g. assets/hmer_small.pt")
    parser.add_argument("--fp32", action="store_true", help="keep full-precision weights")
    args = parser.parse_args(argv)
    try:
        meta = export(args.checkpoint, args.out, half=not args.fp32)
    except (CheckpointError, OSError) as e:
        print(f"hmer-train export: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1e6:.1f} MB, {meta['weights_dtype']}, "
          f"step {meta.get('step', '?')})")  # fmt: skip
    return 0
