"""Is a new checkpoint really better than the base one? A paired comparison of
`hmer-eval --json` reports on the same expressions.

    python benchmarks/compare_evals.py BASE_2014.json NEW_2014.json [BASE_2016.json NEW_2016.json ...] [--json OUT]

Arguments come in pairs (base, new), each pair scoring one split. For every pair,
and pooled over all pairs, it prints both ExpRates, the difference in points with
its 95% interval, the expressions only one of the two reads right, and the exact
two-sided McNemar p-value (a binomial test on those expressions). Two models of
one lineage read most expressions alike, so only the expressions they disagree on
tell them apart; a one-point gain on 1,000 expressions is often within chance.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any


class ReportError(ValueError):
    pass


def _failed_ids(report: dict[str, Any], where: str) -> set[str]:
    try:
        return {f["id"] for f in report["failures"]}
    except (KeyError, TypeError) as e:
        raise ReportError(f"{where}: not an `hmer-eval --json` report (no failures list with ids)") from e


def mcnemar_p(only_new: int, only_base: int) -> float:
    """Exact two-sided p-value of the sign test on the discordant expressions."""
    n = only_new + only_base
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_new, only_base) + 1))
    return min(1.0, 2 * tail / 2**n)


def paired(n: int, base_failed: set[str], new_failed: set[str]) -> dict[str, Any]:
    """Both ExpRates on the same n expressions and the paired difference new - base."""
    only_new = len(base_failed - new_failed)  # the new model reads these right, the base does not
    only_base = len(new_failed - base_failed)
    diff = (only_new - only_base) / n
    se = math.sqrt(max(only_new + only_base - n * diff**2, 0.0)) / n
    return {
        "n": n,
        "base_exprate": 100.0 * (n - len(base_failed)) / n,
        "new_exprate": 100.0 * (n - len(new_failed)) / n,
        "difference": 100.0 * diff,
        "ci95": [100.0 * (diff - 1.96 * se), 100.0 * (diff + 1.96 * se)],
        "only_new_right": only_new,
        "only_base_right": only_base,
        "p_value": mcnemar_p(only_new, only_base),
    }


def compare(pairs: list[tuple[dict[str, Any], dict[str, Any]]], names: list[tuple[str, str]]) -> dict[str, Any]:
    rows, pooled_n, pooled_base, pooled_new = [], 0, set(), set()
    for (base, new), (base_name, new_name) in zip(pairs, names):
        if base.get("split") != new.get("split") or base.get("n") != new.get("n"):
            raise ReportError(f"{base_name} ({base.get('split')}, n={base.get('n')}) and {new_name} "
                              f"({new.get('split')}, n={new.get('n')}) do not score the same expressions")  # fmt: skip
        split = base.get("split")
        if not base.get("n"):
            raise ReportError(f"{base_name} scores no expressions")
        if any(row["split"] == split for row in rows):
            raise ReportError(f"split {split} comes twice: pooling needs each split once (compare one pair at a time)")
        base_failed, new_failed = _failed_ids(base, base_name), _failed_ids(new, new_name)
        rows.append({"split": split, "base": base.get("checkpoint", base_name), "new": new.get("checkpoint", new_name),
                     **paired(base["n"], base_failed, new_failed)})  # fmt: skip
        pooled_n += base["n"]
        pooled_base |= {(split, i) for i in base_failed}  # ids are only unique within a split
        pooled_new |= {(split, i) for i in new_failed}
    report: dict[str, Any] = {"pairs": rows}
    if len(rows) > 1:
        report["pooled"] = paired(pooled_n, pooled_base, pooled_new)
    return report


def _line(label: str, row: dict[str, Any]) -> str:
    lo, hi = row["ci95"]
    return (f"{label:>8}  n={row['n']:5d}  {row['base_exprate']:6.2f}% -> {row['new_exprate']:6.2f}%  "
            f"{row['difference']:+.2f} points (95% {lo:+.2f} .. {hi:+.2f})  only new right {row['only_new_right']}, "
            f"only base right {row['only_base_right']}, p = {row['p_value']:.3f}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", type=Path, help="BASE.json NEW.json, one pair per split")
    parser.add_argument("--json", type=Path, help="write the comparison here")
    args = parser.parse_args(argv)
    if len(args.reports) % 2:
        print("compare_evals: give the reports in pairs: BASE.json NEW.json [BASE.json NEW.json ...]", file=sys.stderr)
        return 2
    try:
        loaded = []
        for path in args.reports:
            try:
                loaded.append(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, json.JSONDecodeError) as e:
                raise ReportError(f"{path}: cannot read it as JSON ({e})") from e
        paths = [str(p) for p in args.reports]
        report = compare(list(zip(loaded[::2], loaded[1::2])), list(zip(paths[::2], paths[1::2])))
    except ReportError as e:
        print(f"compare_evals: {e}", file=sys.stderr)
        return 2
    for row in report["pairs"]:
        print(_line(str(row["split"]), row))
    if "pooled" in report:
        print(_line("pooled", report["pooled"]))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
