"""Does fine-tuning on a writer's own expressions help that writer, without hurting others?

For each of the writers with the most expressions in the CROHME test sets (the
InkML files carry writer ids), the writer's expressions are split into folds;
each fold is recognized by a model fine-tuned on the writer's other folds, so
every expression of the writer is tested once, by a model that never saw it
(a writer has only 15-40 expressions: one split would leave a test set where
one expression is several points). Also measured: ExpRate on a fixed sample of
everybody else's expressions (`--others all`: every one outside the check), before
and after (forgetting), with the expressions each fold lost and gained there, so
that a writer's loss elsewhere can be told from chance.

Each fold's fine-tune is measured twice: with all of its weight change, and as
the app keeps it: the default share of the change (`FinetuneConfig.keep`), moved
further back toward the base if the forgetting limit (`FinetuneConfig.max_forgetting`)
finds it lost too much on a separate check set of other writers' expressions
(disjoint from the forgetting sample, as the app's CROHME check is).

CROHME's test writers write much like its training writers, so there is little
of a writer's own to learn. `--slant` and `--squeeze` simulate a person whose
handwriting is unlike the training data: every expression of the chosen writers
(adapt and test folds alike; never the others) is slanted by `x += slant * (cy - y)`
and each of its strokes narrowed to `squeeze` of its width about its own center.

    python benchmarks/adaptation.py --data ../shared/datasets/crohme --checkpoint assets/hmer_small.pt --writers 5
    python benchmarks/adaptation.py ... --slant 0.5 --squeeze 0.6   # a writer the model reads badly
    python benchmarks/adaptation.py ... --others all --json adapt.json   # forgetting on ~1,800 expressions
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.atomic import atomic_write  # noqa: E402
from model.checkpoint import load_checkpoint  # noqa: E402
from model.hmer import HMER  # noqa: E402
from model.vocab import Vocabulary  # noqa: E402
from train.data import Example, load_split  # noqa: E402
from train.finetune import (  # noqa: E402
    CHECK_EXPRESSIONS, TRAINABLE, FinetuneConfig, exprate, finetune, limit_forgetting, lost_and_gained,
    mix_weights, percent, read_correctly,
)


def with_style(example: Example, slant: float, squeeze: float) -> Example:
    """The expression as a writer with a strong slant and narrow letters would write it.
    y grows downwards in ink coordinates, so a positive slant leans letters to the right."""
    if slant == 0 and squeeze == 1:
        return example
    pts = np.concatenate([s[:, :2] for s in example.strokes])
    cy = (pts[:, 1].min() + pts[:, 1].max()) / 2
    strokes = []
    for stroke in example.strokes:
        xy = stroke[:, :2].astype(np.float64)
        cx = (xy[:, 0].min() + xy[:, 0].max()) / 2
        x = cx + squeeze * (xy[:, 0] - cx) + slant * (cy - xy[:, 1])
        strokes.append(np.concatenate([np.stack([x, xy[:, 1]], axis=1), stroke[:, 2:]], axis=1))
    return replace(example, strokes=strokes)


def _count_or_all(text: str) -> int | None:
    """A number of expressions, or None for 'all'."""
    if text == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'all', not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def measure(
    model: HMER, vocab: Vocabulary, test: list[Example], others: tuple[list[Example], list[bool]],
    check: tuple[list[Example], list[bool]],
) -> dict:  # fmt: skip
    """What `model` reads: of the writer's test fold, and of the others and the check, each given with
    the base model's flags (ExpRate, expressions lost and gained)."""
    others_after = read_correctly(model, vocab, others[0])
    return {"test_read": sum(read_correctly(model, vocab, test)), "others": percent(others_after),
            "others_lost_gained": lost_and_gained(others[1], others_after),
            "check_lost_gained": lost_and_gained(check[1], read_correctly(model, vocab, check[0]))}


def summarize(rows: list[dict], args: argparse.Namespace, replay: bool) -> dict:
    """The report over the writers measured so far."""
    total = sum(r["expressions"] for r in rows)
    return {
        "checkpoint": str(args.checkpoint), "writers": rows, "skip_writers": args.skip_writers,
        "decode": "greedy", "folds": args.folds,
        "steps": args.steps, "lr": args.lr, "trainable": args.trainable, "replay": replay,
        "simulated_style": {"slant": args.slant, "squeeze": args.squeeze},
        "others": "all" if args.others is None else args.others,
        "pooled_writer_before": sum(r["writer_before"] * r["expressions"] for r in rows) / max(1, total),
        "pooled_writer_after": sum(r["writer_after"] * r["expressions"] for r in rows) / max(1, total),
        "mean_writer_gain": float(np.mean([r["writer_after"] - r["writer_before"] for r in rows])) if rows else 0.0,
        "mean_others_change": float(np.mean([r["others_after"] - r["others_before"] for r in rows])) if rows else 0.0,
        "keep": args.keep, "max_forgetting": args.max_forgetting, "check": args.check,
        "limited_pooled_writer_after": sum(r["limited"]["writer_after"] * r["expressions"] for r in rows) / max(1, total),
        "limited_mean_others_change": float(np.mean([r["limited"]["others_after"] - r["others_before"] for r in rows]))
        if rows else 0.0,
        "by_share": {str(share): {
            "pooled_writer_after": sum(r["by_share"][str(share)]["writer_after"] * r["expressions"] for r in rows)
            / max(1, total),
            "mean_others_change": float(np.mean([r["by_share"][str(share)]["others_after"] - r["others_before"]
                                                 for r in rows])) if rows else 0.0} for share in args.shares},
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--splits", nargs="+", default=["2014", "2016"])
    parser.add_argument("--writers", type=int, default=5, help="how many writers (those with the most expressions)")
    parser.add_argument("--skip-writers", type=int, default=0,
                        help="pass over this many of the writers with the most expressions first (to add writers "
                             "to an earlier run's sample)")
    parser.add_argument("--folds", type=int, default=2, help="folds per writer (2: adapt on half, test on the other)")
    parser.add_argument("--others", type=_count_or_all, default=300,
                        help="expressions of other writers to watch for forgetting ('all': every one not in "
                        "the check)")
    parser.add_argument("--check", type=int, default=CHECK_EXPRESSIONS,
                        help="other writers' expressions the forgetting limit checks (disjoint from "
                        "--others; default: as many as the app's check)")
    parser.add_argument("--keep", type=float, default=FinetuneConfig.keep,
                        help="share of each fine-tune's weight change the app keeps (before the limit)")
    parser.add_argument("--max-forgetting", type=float, default=FinetuneConfig.max_forgetting,
                        help="ExpRate points the check may lose beyond its noise")
    parser.add_argument("--shares", type=float, nargs="*", default=[],
                        help="also measure each fold's fine-tune keeping only these shares of its weight change")
    parser.add_argument("--steps", type=int, default=FinetuneConfig.max_steps)
    parser.add_argument("--lr", type=float, default=FinetuneConfig.lr)
    parser.add_argument("--trainable", choices=TRAINABLE, default=FinetuneConfig.trainable)
    parser.add_argument("--no-replay", action="store_true", help="do not replay CROHME training data")
    parser.add_argument("--slant", type=float, default=0.0, help="simulated style: shear of the writers' ink")
    parser.add_argument("--squeeze", type=float, default=1.0, help="simulated style: width factor of each stroke")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.folds < 2:
        parser.error("--folds must be at least 2")
    if not 0.1 <= args.squeeze <= 2.0:
        parser.error("--squeeze must be in [0.1, 2]")
    if not 0 < args.keep <= 1:
        parser.error("--keep must be in (0, 1]")
    if args.skip_writers < 0:
        parser.error("--skip-writers must be 0 or more")

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
    ranked = sorted(by_writer, key=lambda w: -len(by_writer[w]))
    chosen = ranked[args.skip_writers : args.skip_writers + args.writers]
    replay = None if args.no_replay else load_split(args.data, "train", vocab)[0]
    # the share and the limit are applied below, so both the whole change and the kept one are measured
    config = FinetuneConfig(max_steps=args.steps, lr=args.lr, trainable=args.trainable, keep=1.0, max_forgetting=None)
    kept_shares = replace(config, keep=args.keep).shares()
    base, _, _ = load_checkpoint(args.checkpoint)
    base_state = base.state_dict()
    rows = []
    styled = args.slant != 0 or args.squeeze != 1
    for writer in chosen:
        mine = [with_style(e, args.slant, args.squeeze) for e in by_writer[writer]]
        plain = exprate(base, vocab, by_writer[writer]) if styled else None  # what the style costs
        fold_of = np.random.default_rng(0).permutation(len(mine)) % args.folds
        pool = [e for e in examples if e.writer != writer]
        pool = [pool[i] for i in np.random.default_rng(1).permutation(len(pool))]
        n_others = max(0, len(pool) - args.check) if args.others is None else args.others
        others, check = pool[:n_others], pool[n_others : n_others + args.check]
        others_before = read_correctly(base, vocab, others)
        before_writer, before_others = exprate(base, vocab, mine), percent(others_before)
        check_before = read_correctly(base, vocab, check)
        correct_after, others_after, steps, fit = 0.0, [], [], []
        correct_limited, others_limited, shares = 0.0, [], []
        per_fold: list[dict] = []
        by_share = {share: [0.0, []] for share in args.shares}  # share -> [correct on the writer, others per fold]
        for fold in range(args.folds):
            adapt = [e for e, f in zip(mine, fold_of) if f != fold]
            test = [e for e, f in zip(mine, fold_of) if f == fold]
            with tempfile.TemporaryDirectory() as tmp:
                report = finetune(args.checkpoint, adapt, Path(tmp) / "adapted.pt", config, replay=replay)
                adapted, _, _ = load_checkpoint(report.output)
            tuned = {k: v.clone() for k, v in adapted.state_dict().items()}
            # each share measured on the writer's test fold, the others and the check (expressions lost,
            # gained), so that other shares and other rules for the limit can be judged offline, and
            # whether a writer's loss elsewhere is beyond chance (the others' lost and gained)
            sets = {"test": test, "others": (others, others_before), "check": (check, check_before)}
            measured = {}
            for share in (1.0, *args.shares):
                adapted.load_state_dict(mix_weights(base_state, tuned, share))
                measured[str(share)] = measure(adapted, vocab, **sets)
            correct_after += measured["1.0"]["test_read"]
            others_after.append(measured["1.0"]["others"])
            for share, (_, others_share) in by_share.items():
                by_share[share][0] += measured[str(share)]["test_read"]
                others_share.append(measured[str(share)]["others"])
            adapted.load_state_dict(tuned)
            share, _, _ = limit_forgetting(adapted, base_state, vocab, check, check_before, args.max_forgetting,
                                           kept_shares)  # fmt: skip
            # the share the limit kept (now in `adapted`), read again only when it was not measured above
            limited = measured.get(str(share)) or measure(adapted, vocab, **sets)
            per_fold.append({"test": len(test), "by_share": measured, "limited": {"share": share, **limited}})
            shares.append(share)
            correct_limited += limited["test_read"]
            others_limited.append(limited["others"])
            steps.append(report.steps)
            fit.append((report.train_before, report.train_after))  # did it learn its own samples?
        row = {"writer": writer, "expressions": len(mine), "steps": steps, "adapt_set_before_after": fit,
               "writer_plain": plain, "writer_before": before_writer, "writer_after": 100 * correct_after / len(mine),
               "others_expressions": len(others), "check_expressions": len(check),
               "others_before": before_others, "others_after": float(np.mean(others_after)),
               "limited": {"shares": shares, "writer_after": 100 * correct_limited / len(mine),
                           "others_after": float(np.mean(others_limited))},
               "by_share": {str(share): {"writer_after": 100 * c / len(mine), "others_after": float(np.mean(o))}
                            for share, (c, o) in by_share.items()},
               "folds": per_fold}  # fmt: skip
        rows.append(row)
        print(f"writer {writer}: " + (f"{plain:.1f}% plain, " if styled else "") +
              f"{row['writer_before']:.1f}% -> {row['writer_after']:.1f}% on their {len(mine)}; "
              f"others {row['others_before']:.1f}% -> {row['others_after']:.1f}%; steps {steps}; "
              f"own training samples {', '.join(f'{a:.0f}->{b:.0f}%' for a, b in fit)}; as the app keeps it "
              f"(shares kept {shares}): {row['limited']['writer_after']:.1f}% on theirs, "
              f"others {row['limited']['others_after']:.1f}%" +
              "".join(f"; keeping {k}: {v['writer_after']:.1f}% on theirs, others {v['others_after']:.1f}%"
                      for k, v in row["by_share"].items()), flush=True)  # fmt: skip
        if args.json:  # after each writer, so that an interrupted run keeps what it measured
            report_json = json.dumps(summarize(rows, args, replay is not None), indent=2).encode()
            atomic_write(args.json, lambda f, data=report_json: f.write(data))
    summary = summarize(rows, args, replay is not None)
    print(json.dumps({k: v for k, v in summary.items() if k != "writers"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
