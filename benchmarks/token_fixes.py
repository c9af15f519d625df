"""How often one click makes the app's reading right.

    python benchmarks/token_fixes.py --data DIR --split 2016 [--checkpoint C] [--limit N] [--json OUT]

Each expression is recognized as the app recognizes it (beam 10, its pruned search),
and its reading is compared with the truth:

* `exprate`: the first reading is right;
* `among_readings`: the truth is among the readings the app lists (Alt+1 ... Alt+5);
* `one_token_off`: the first reading is wrong in exactly one position;
* `token_fix_at_k`: ... and the right token is among the first k that the attention
  panel offers for that position (`Prediction.token_alternatives`), k = 1, 3, 5;
* `one_click`: right after one action: the first reading, one of the listed
  readings, or one token of the first reading replaced by one of its offered choices;
* `two_clicks`: ... or two tokens of the first reading replaced by offered choices
  (each offered for the first reading as the model read it);
* `wrong_token_confidence_rank`: for readings one token off, how often the wrong
  token is the least confident of the reading (rank 1), among the two or three
  least confident: the strip's colors lead the user to it.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.prediction import Prediction  # noqa: E402
from model.recognizer import Recognizer  # noqa: E402
from train.data import load_split  # noqa: E402

TOP_K = (1, 3, 5)


@dataclass
class Outcome:
    right: bool
    among_readings: bool
    wrong_position: int | None  # the one position where the first reading differs, if only one
    fix_rank: int | None  # 1-based rank of the right token among that position's offered choices
    confidence_rank: int | None  # 1-based rank of the wrong token's probability, least confident first
    two_fixes: bool = False  # two positions differ, and each one's right token is offered there


def outcome(prediction: Prediction, truth: list[str]) -> Outcome:
    tokens = prediction.tokens
    right = tokens == truth
    among = any(a.tokens == truth for a in prediction.alternatives)
    diff = [i for i, (p, t) in enumerate(zip(tokens, truth)) if p != t] if len(tokens) == len(truth) else []

    def offered(i: int) -> list[str]:
        return (
            [t for t, _ in prediction.token_alternatives[i]] if i < len(prediction.token_alternatives) else []
        )

    if len(diff) == 2:
        return Outcome(False, among, None, None, None, all(truth[i] in offered(i) for i in diff))
    if right or len(diff) != 1:
        return Outcome(right, among or right, None, None, None)
    i = diff[0]
    fix_rank = offered(i).index(truth[i]) + 1 if truth[i] in offered(i) else None
    order = np.argsort(np.asarray(prediction.token_probs), kind="stable").tolist()  # least confident first
    return Outcome(False, among, i, fix_rank, order.index(i) + 1)


def summarize(outcomes: list[Outcome]) -> dict[str, Any]:
    n = len(outcomes)

    def pct(count: int) -> float:
        return round(100.0 * count / n, 2) if n else 0.0

    off = [o for o in outcomes if o.wrong_position is not None]
    fixes = {str(k): pct(sum(o.fix_rank is not None and o.fix_rank <= k for o in off)) for k in TOP_K}
    one_click = sum(
        o.right or o.among_readings or (o.fix_rank is not None and o.fix_rank <= max(TOP_K)) for o in outcomes
    )
    return {
        "n": n,
        "exprate": pct(sum(o.right for o in outcomes)),
        "among_readings": pct(sum(o.among_readings for o in outcomes)),
        "one_token_off": pct(len(off)),
        "token_fix_at_k": fixes,
        "one_click": pct(one_click),
        "two_clicks": pct(one_click + sum(o.two_fixes and not o.among_readings for o in outcomes)),
        "wrong_token_confidence_rank": {
            str(k): round(100.0 * sum(o.confidence_rank <= k for o in off) / len(off), 2) if off else 0.0
            for k in (1, 2, 3)
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="2016")
    parser.add_argument("--checkpoint", type=Path, help="default: the bundled model")
    parser.add_argument("--beam", type=int, default=10)
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rec = Recognizer.load(args.checkpoint, device="cpu")
    examples, _ = load_split(args.data, args.split, rec.vocab, limit=args.limit or None)
    outcomes = [outcome(rec.recognize(ex.strokes, args.beam), list(ex.tokens))
                for ex in tqdm(examples, desc="recognize", mininterval=5, dynamic_ncols=True)]  # fmt: skip
    report = {"split": args.split, "checkpoint": str(rec.path), "beam": args.beam, "nbest": rec.nbest,
              **summarize(outcomes)}  # fmt: skip
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
