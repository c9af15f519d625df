"""Does fine-tuning on a writer's own expressions help that writer, without hurting others?

For each of the writers with the most expressions in the CROHME test sets (the
InkML files carry writer ids), fine-tune on part of that writer's expressions,
then measure ExpRate on the writer's other expressions and on a fixed sample
of everybody else's, before and after.

    python benchmarks/adaptation.py --data ../shared/datasets/crohme --checkpoint assets/hmer_small.pt --writers 5
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.checkpoint import load_checkpoint  # noqa: E402
from train.data import Example, load_split  # noqa: E402
from train.finetune import FinetuneConfig, exprate, finetune  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--splits", nargs="+", default=["2014", "2016"])
    parser.add_argument("--writers", type=int, default=5, help="how many writers (those with the most expressions)")
    parser.add_argument("--adapt-fraction", type=float, default=0.5, help="share of a writer's expressions to train on")
    parser.add_argument("--others", type=int, default=300, help="expressions of other writers to watch for forgetting")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--no-replay", action="store_true", help="do not replay CROHME training data")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    _, vocab, _ = load_checkpoint(args.checkpoint)
    examples: list[Example] = []
    for split in args.splits:
        loaded, _ = load_split(args.data, split, vocab)
        for e in loaded:  # writer ids are per competition year
            if e.writer:
                e.writer = f"{split}/{e.writer}"
                examples.append(e)
    by_writer: dict[str, list[Example]] = defaultdict(list)
    for e in examples:
        by_writer[e.writer].append(e)
    chosen = sorted(by_writer, key=lambda w: -len(by_writer[w]))[: args.writers]
    replay = None if args.no_replay else load_split(args.data, "train", vocab)[0]
    rows = []
    for writer in chosen:
        mine = by_writer[writer]
        order = np.random.default_rng(0).permutation(len(mine))
        n_adapt = int(round(args.adapt_fraction * len(mine)))
        adapt = [mine[i] for i in order[:n_adapt]]
        test = [mine[i] for i in order[n_adapt:]]
        others = [e for e in examples if e.writer != writer]
        others = [others[i] for i in np.random.default_rng(1).permutation(len(others))[: args.others]]
        model, _, _ = load_checkpoint(args.checkpoint)
        before_writer, before_others = exprate(model, vocab, test), exprate(model, vocab, others)
        with tempfile.TemporaryDirectory() as tmp:
            report = finetune(args.checkpoint, adapt, Path(tmp) / "adapted.pt", FinetuneConfig(max_steps=args.steps), replay=replay)
            adapted, _, _ = load_checkpoint(report.output)
        row = {"writer": writer, "adapt": len(adapt), "test": len(test), "steps": report.steps,
               "writer_before": before_writer, "writer_after": exprate(adapted, vocab, test),
               "others_before": before_others, "others_after": exprate(adapted, vocab, others)}  # fmt: skip
        rows.append(row)
        print(f"writer {writer}: {row['writer_before']:.1f}% -> {row['writer_after']:.1f}% on {len(test)} of theirs; "
              f"others {row['others_before']:.1f}% -> {row['others_after']:.1f}%", flush=True)  # fmt: skip
    summary = {
        "checkpoint": str(args.checkpoint), "writers": rows, "decode": "greedy",
        "mean_writer_gain": float(np.mean([r["writer_after"] - r["writer_before"] for r in rows])) if rows else 0.0,
        "mean_others_change": float(np.mean([r["others_after"] - r["others_before"] for r in rows])) if rows else 0.0,
    }  # fmt: skip
    print(json.dumps({k: v for k, v in summary.items() if k != "writers"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
