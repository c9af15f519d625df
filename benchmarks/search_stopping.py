"""Could the beam search stop earlier, or rescore fewer hypotheses, and still
return the reference's answers?

One search per expression records everything each direction's search saw: each
finished hypothesis with the step it finished at, and the best open score at
every step. Every hypothesis is then rescored by the opposite direction. Since
a direction's search never depends on when it will stop, replaying these
records shows exactly what any stopping rule or rescoring cut would have
returned, without searching again. Reported per rule: the share of best
hypotheses identical to the reference's, ExpRate, and the steps it needs.

    python benchmarks/search_stopping.py --data ../shared/datasets/crohme --split 2014 --limit 200
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.beam import _BeamGroup, _Found, _rescore, _search  # noqa: E402
from model.rasterize import rasterize  # noqa: E402
from model.recognizer import Recognizer, length_limit  # noqa: E402
from train.data import load_split  # noqa: E402


class _RecordingGroup(_BeamGroup):
    def __init__(self, beam_size: int, alpha: float, early_stopping: bool) -> None:
        super().__init__(beam_size, alpha, early_stopping)
        self.events: list[tuple] = []  # ("add", ids, sum_logprobs) | ("open", best_sum_logprobs, cur_len)

    def add(self, ids: list[int], sum_logprobs: float) -> None:
        self.events.append(("add", tuple(ids), sum_logprobs))
        super().add(ids, sum_logprobs)

    def is_done(self, best_sum_logprobs: float, cur_len: int) -> bool:
        self.events.append(("open", best_sum_logprobs, cur_len))
        return super().is_done(best_sum_logprobs, cur_len)


@dataclass
class _Record:
    truth: tuple[int, ...]
    events: dict[str, list[tuple]]  # per direction
    total: dict[tuple[str, tuple[int, ...]], float] = field(default_factory=dict)  # (direction, ids) -> both scores


Rule = Callable[[_BeamGroup, float, int], bool]


def _left_to_right(direction: str, ids: tuple[int, ...]) -> tuple[int, ...]:
    """A group's ids (start token first) as the symbols read left to right."""
    body = ids[1:]
    return tuple(body if direction == "l2r" else body[::-1])


def _replay(rec: _Record, rule: Rule, beam: int, alpha: float) -> tuple[tuple[int, ...], int, list]:
    """The best hypothesis, the steps searched and the kept hypotheses under `rule`."""
    kept, steps = [], 0
    for direction, events in rec.events.items():
        group = _BeamGroup(beam, alpha, False)
        for event in events:
            if event[0] == "add":
                group.add(list(event[1]), event[2])
            else:
                steps = max(steps, event[2])
                if rule(group, event[1], event[2]):
                    break
        for score, ids in group.beams:
            kept.append((direction, tuple(ids), score))
    best = max(kept, key=lambda k: rec.total[(k[0], k[1])], default=None)
    return (() if best is None else _left_to_right(best[0], best[1])), steps, kept


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="2014")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--beam", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rec_model = Recognizer.load(args.checkpoint, device="cpu")
    model, vocab, alpha = rec_model.model, rec_model.vocab, 1.0
    examples, _ = load_split(args.data, args.split, vocab, limit=args.limit)
    records = []
    with torch.inference_mode():
        for i, ex in enumerate(examples):
            image = rasterize(ex.strokes, model.config.raster).image
            memory, mask = model.encode(torch.from_numpy(image)[None, None], torch.zeros(1, *image.shape, dtype=torch.bool))
            groups = _search(model, memory, mask, vocab, args.beam, length_limit(len(ex.strokes)), alpha, False,
                             group_type=_RecordingGroup)  # fmt: skip
            rec = _Record(tuple(vocab.encode(ex.tokens)), {"l2r": groups[0].events, "r2l": groups[1].events})
            found = []
            for direction, events in rec.events.items():
                for event in events:
                    if event[0] == "add":
                        own = event[2] / len(event[1]) ** alpha
                        found.append(_Found(0, direction, _left_to_right(direction, event[1]), own))
            _rescore(model, memory, mask, vocab, alpha, found)
            adds = [(d, e[1]) for d, events in rec.events.items() for e in events if e[0] == "add"]
            rec.total = {key: f.total for key, f in zip(adds, found)}
            records.append(rec)
            print(f"\r{i + 1}/{len(examples)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)

    def at_least(n: int) -> Rule:
        return lambda g, best, cur: len(g.beams) >= n or g.is_done(best, cur)

    def best_ahead(margin: float) -> Rule:  # the best finished score leads every open beam by `margin`
        return lambda g, best, cur: g.is_done(best, cur) or (
            bool(g.beams) and max(s for s, _ in g.beams) >= best / cur**alpha + margin)

    rules: dict[str, Rule] = {"reference": lambda g, best, cur: g.is_done(best, cur),
                              "beam-size finished (early_stopping)": lambda g, best, cur: len(g.beams) >= g.beam_size,
                              **{f"{n} finished": at_least(n) for n in (1, 3, 5)},
                              **{f"best ahead by {m}": best_ahead(m) for m in (0.0, 0.25, 0.5)}}  # fmt: skip
    reference_runs = [_replay(r, rules["reference"], args.beam, alpha) for r in records]
    reference = [best for best, _, _ in reference_runs]
    report = {"checkpoint": str(rec_model.path), "split": args.split, "n": len(records), "beam": args.beam, "rules": {}}
    for name, rule in rules.items():
        results = [_replay(r, rule, args.beam, alpha) for r in records]
        report["rules"][name] = {
            "identical": sum(b == ref for (b, _, _), ref in zip(results, reference)) / len(records),
            "exprate": 100 * sum(b == r.truth for (b, _, _), r in zip(results, records)) / len(records),
            "mean_steps": sum(s for _, s, _ in results) / len(records),
        }
    for keep in (1, 3, 5, 8):  # rescoring only each direction's `keep` best by their own score
        same = right = 0
        for r, ref, (_, _, kept) in zip(records, reference, reference_runs):
            by_own = sorted(kept, key=lambda k: -k[2])
            chosen = [k for d in ("l2r", "r2l") for k in [k for k in by_own if k[0] == d][:keep]]
            top = max(chosen, key=lambda k: r.total[(k[0], k[1])])
            best = _left_to_right(top[0], top[1])
            same += best == ref
            right += best == r.truth
        report["rules"][f"rescore own top {keep}"] = {"identical": same / len(records), "exprate": 100 * right / len(records)}
    for name, row in report["rules"].items():
        steps = f"  steps {row['mean_steps']:.1f}" if "mean_steps" in row else ""
        print(f"{name:38s} identical {row['identical']:.3f}  ExpRate {row['exprate']:.1f}%{steps}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
