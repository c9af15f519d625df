"""What the recognizer gets wrong, from the failures `hmer-eval --json` lists.

    python benchmarks/failure_report.py EVAL.json [--top 10] [--json OUT]

Prints how often a wrong prediction is shorter or longer than the truth, the most
frequent substitutions (truth -> prediction) among failures with one wrong token
and the same length, and the substitutions at differing positions of all
same-length failures (where letter case and brace swaps show). These are the
figures behind the model card's "Known weaknesses".
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any


def failure_report(failures: list[dict[str, Any]], top: int = 10) -> dict[str, Any]:
    """Counts over `failures` (dicts with 'prediction' and 'truth' token strings)."""
    shorter = longer = 0
    single: Counter[tuple[str, str]] = Counter()  # one wrong token, same length
    same_length: Counter[tuple[str, str]] = Counter()  # every differing position, same length
    for f in failures:
        pred, truth = f["prediction"].split(), f["truth"].split()
        if len(pred) < len(truth):
            shorter += 1
        elif len(pred) > len(truth):
            longer += 1
        else:
            pairs = [(t, p) for t, p in zip(truth, pred) if t != p]
            same_length.update(pairs)
            if len(pairs) == 1:
                single.update(pairs)
    n = len(failures)
    share = (lambda k: 100.0 * k / n) if n else (lambda k: 0.0)
    return {
        "failures": n,
        "shorter_pct": share(shorter),
        "longer_pct": share(longer),
        "same_length_pct": share(n - shorter - longer),
        "single_substitutions": [[t, p, c] for (t, p), c in single.most_common(top)],
        "same_length_substitutions": [[t, p, c] for (t, p), c in same_length.most_common(top)],
        "brace_swaps": same_length[("{", "}")] + same_length[("}", "{")],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("eval_json", help="the file `hmer-eval --json` wrote")
    parser.add_argument("--top", type=int, default=10, help="how many substitutions to list")
    parser.add_argument("--json", dest="json_out", help="also write the report here")
    args = parser.parse_args(argv)
    try:
        failures = json.loads(Path(args.eval_json).read_text())["failures"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"failure_report: cannot read failures from {args.eval_json}: {e}", file=sys.stderr)
        return 2
    r = failure_report(failures, args.top)
    print(f"{r['failures']} failures: {r['shorter_pct']:.0f}% shorter than the truth, {r['longer_pct']:.0f}% longer, "
          f"{r['same_length_pct']:.0f}% the same length ({r['brace_swaps']} brace swaps among them)")
    for title, key in (("one wrong token", "single_substitutions"), ("same length, all", "same_length_substitutions")):
        print(f"{title}: " + ", ".join(f"{t} -> {p} ({c})" for t, p, c in r[key]))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
