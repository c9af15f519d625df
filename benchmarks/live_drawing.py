"""What a person waits for while writing: real expressions replayed stroke by stroke,
in real time, through the app's recognition service and its scheduling.

After each stroke (pen up) the app asks for a greedy preview of the ink; when the pen
rests for the debounce it asks for the beam search. Here a writer draws each stroke of
a CROHME expression, in its order, for `--draw-ms` (a random time in that range), and
lifts the pen for `--gap-ms` before the next; the same seeded times are used for each
way of scheduling compared (`--ways KIND:DEBOUNCE_MS ...`), in one run:

* `before` (the app until session 27): the debounce ran from the last pen up even
  while the next stroke was being drawn, and a running search could not be stopped, so
  a beam search started mid-stroke made the next preview wait for its end;
* `now`: the beam search starts only once the pen has stayed up for the debounce, and
  new ink stops a running recognition of older ink at its next decoder step;
* `compiled`: as `now`, with the compiled decoder step (`model/compiled_step.py`;
  compiled first if the cache has none), as the app runs once it has compiled it.

Reported per way: the wait from each pen up to its preview (p50 / p95 over all
strokes), how many previews were never shown because newer ink came first, the wait
from the last pen up to the beam search's reading, and the worker's time spent on
readings nobody saw.

    python benchmarks/live_drawing.py --data ../shared/datasets/crohme --split 2014 --limit 20
    python benchmarks/live_drawing.py --data ... --ways before:300 now:300 now:100
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hmer_desktop.service import RecognitionService, Superseded  # noqa: E402
from model.paths import BUNDLED_CHECKPOINT, asset_path  # noqa: E402
from model.recognizer import Recognizer  # noqa: E402
from train.data import load_split  # noqa: E402

KINDS = ("before", "now", "compiled")


def _way(text: str) -> tuple[str, float]:
    kind, _, ms = text.partition(":")
    try:
        debounce = float(ms)
    except ValueError:
        debounce = -1.0
    if kind not in KINDS or not debounce >= 0:
        raise argparse.ArgumentTypeError(
            f"a way is KIND:DEBOUNCE_MS with KIND one of {', '.join(KINDS)}, not {text!r}"
        )
    return kind, debounce


class _Unstoppable(Recognizer):
    """The recognizer as it was before session 27: it ignores the service's stop check."""

    def recognize(self, strokes, beam_size=10, should_stop=None):
        return super().recognize(strokes, beam_size)


@dataclass
class _Log:
    """What the worker answered, stamped when it answered."""

    shown: dict[tuple[int, int], float] = field(default_factory=dict)  # (ink version, beam) -> time
    wasted_ms: float = 0.0  # recognitions that ran to their end for ink that had changed since
    stopped: int = 0  # recognitions that newer ink stopped part-way
    lock: threading.Lock = field(default_factory=threading.Lock)

    def watch(self, future: Future, version: int, beam: int, current: list[int]) -> None:
        def done(f: Future) -> None:
            now = time.perf_counter()
            with self.lock:
                error = f.exception()
                if isinstance(error, Superseded):
                    if error.__cause__ is not None:  # it ran, then newer ink stopped it
                        self.stopped += 1
                    return
                if error is not None:
                    raise error
                if version == current[0]:  # the app shows only readings of the ink on screen
                    self.shown.setdefault((version, beam), now)
                else:
                    self.wasted_ms += f.result().latency_ms

        future.add_done_callback(done)


def _schedule(
    n_strokes: int, rng: np.random.Generator, draw_ms: tuple[float, float], gap_ms: tuple[float, float]
):
    """Pen-down and pen-up times (s from the start) of each stroke."""
    t, downs, ups = 0.0, [], []
    for _ in range(n_strokes):
        downs.append(t)
        t += rng.uniform(*draw_ms) / 1000
        ups.append(t)
        t += rng.uniform(*gap_ms) / 1000
    return downs, ups


def replay(service: RecognitionService, strokes: list[np.ndarray], downs: list[float], ups: list[float],
           kind: str, debounce_s: float, beam: int, settle_s: float) -> dict:  # fmt: skip
    """Draw `strokes` on the given timetable; what the writer waited for."""
    log = _Log()
    current = [0]  # the ink version on screen
    events: list[tuple[float, str, int]] = []  # (time, what, stroke)
    for k in range(len(strokes)):
        events.append((ups[k], "preview", k))
        next_down = downs[k + 1] if k + 1 < len(strokes) else float("inf")
        next_up = ups[k + 1] if k + 1 < len(strokes) else float("inf")
        due = ups[k] + debounce_s
        # before: the debounce restarted at the next pen up only; now: the next pen down stops it
        if (kind == "before" and due < next_up) or (kind != "before" and due < next_down):
            events.append((due, "beam", k))
    events.sort()
    start = time.perf_counter()
    for when, what, k in events:
        time.sleep(max(0.0, start + when - time.perf_counter()))
        version = k + 1
        if what == "preview":
            current[0] = version
        future = service.recognize(
            strokes[: k + 1], ink_version=version, beam_size=1 if what == "preview" else beam
        )
        log.watch(future, version, 1 if what == "preview" else beam, current)
    last = len(strokes)
    deadline = time.perf_counter() + settle_s
    while (last, beam) not in log.shown and time.perf_counter() < deadline:
        time.sleep(0.005)
    with log.lock:
        previews = [
            log.shown[(k + 1, 1)] - (start + ups[k]) for k in range(len(strokes)) if (k + 1, 1) in log.shown
        ]
        final = log.shown.get((last, beam))
        return {
            "preview_wait_s": previews,
            "previews_missed": len(strokes) - len(previews),
            "final_wait_s": None if final is None else final - (start + ups[-1]),
            "wasted_ms": log.wasted_ms,
            "stopped": log.stopped,
        }


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) * 1000 if values else None  # None: nothing was shown


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="2014")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--checkpoint", type=Path, help=f"default: assets/{BUNDLED_CHECKPOINT}")
    parser.add_argument("--beam", type=int, default=10)
    parser.add_argument(
        "--ways",
        type=_way,
        nargs="+",
        default=[("before", 300.0), ("now", 300.0)],
        metavar="KIND:DEBOUNCE_MS",
        help="default: before:300 now:300 (300 ms: the app's default)",
    )
    parser.add_argument("--draw-ms", type=float, nargs=2, default=(150.0, 450.0), metavar=("MIN", "MAX"))
    parser.add_argument("--gap-ms", type=float, nargs=2, default=(100.0, 700.0), metavar=("MIN", "MAX"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    for name, (low, high) in (("--draw-ms", args.draw_ms), ("--gap-ms", args.gap_ms)):
        if not 0 <= low <= high:
            parser.error(f"{name} takes MIN MAX with 0 <= MIN <= MAX")
    ways = [f"{kind}:{debounce:g}" for kind, debounce in args.ways]
    if len(set(ways)) != len(ways):
        parser.error("each way once")
    # All torch work runs on one thread, the app's recognition worker, as in the app: a
    # second thread with a multi-threaded torch pool (loading here on the main thread, or a
    # worker per way) would slow every parallel operation several times (README, "Threads").
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hmer-recognition")
    recognizers = {way: worker.submit((_Unstoppable if kind == "before" else Recognizer).load, args.checkpoint,
                                      device="cpu").result()
                   for way, (kind, _) in zip(ways, args.ways)}  # fmt: skip
    for way, (kind, _) in zip(ways, args.ways):
        if kind == "compiled":
            message = worker.submit(recognizers[way].use_compiled_step, compile_if_missing="now").result()
            if not message.startswith("using"):
                print(f"live_drawing: {way}: {message}", file=sys.stderr)
                return 2
    try:
        examples, _ = worker.submit(load_split, args.data, args.split, recognizers[ways[0]].vocab,
                                    limit=args.limit).result()  # fmt: skip
    except FileNotFoundError as e:
        parser.error(str(e))
    if not examples:
        parser.error(f"no readable expression in split {args.split!r} of {args.data}")
    services = {}
    for way in ways:
        loader = lambda path, device, r=recognizers[way]: r  # noqa: E731 (each service gets its own model)
        services[way] = RecognitionService(args.checkpoint, "cpu", loader=loader, executor=worker)
        services[way].preload().result()
        services[way].recognize(examples[0].strokes, ink_version=0, beam_size=args.beam).result()  # warm-up
    rng = np.random.default_rng(args.seed)
    runs: dict[str, list[dict]] = {way: [] for way in ways}
    try:
        for i, ex in enumerate(examples):
            downs, ups = _schedule(len(ex.strokes), rng, tuple(args.draw_ms), tuple(args.gap_ms))
            order = list(zip(ways, args.ways))
            order = order if i % 2 == 0 else order[::-1]  # alternate which goes first: the machine drifts
            for way, (kind, debounce) in order:
                run = replay(services[way], ex.strokes, downs, ups, kind, debounce / 1000, args.beam, 30.0)
                runs[way].append(run)
                time.sleep(0.2)  # let the other way's leftovers finish
            print(f"\r{i + 1}/{len(examples)}", end="", file=sys.stderr, flush=True)
    finally:
        for service in services.values():
            service.shutdown()
        worker.shutdown(wait=True, cancel_futures=True)
    print(file=sys.stderr)
    report = {"split": args.split, "n": len(examples), "strokes": sum(len(ex.strokes) for ex in examples),
              "beam": args.beam, "draw_ms": list(args.draw_ms),
              "gap_ms": list(args.gap_ms), "seed": args.seed,
              "checkpoint": str(args.checkpoint or asset_path(BUNDLED_CHECKPOINT))}  # fmt: skip
    for way in ways:
        previews = [w for r in runs[way] for w in r["preview_wait_s"]]
        finals = [r["final_wait_s"] for r in runs[way] if r["final_wait_s"] is not None]
        report[way] = {
            "preview_wait_p50_ms": _pct(previews, 50), "preview_wait_p95_ms": _pct(previews, 95),
            "preview_wait_max_ms": _pct(previews, 100),
            "previews_missed": sum(r["previews_missed"] for r in runs[way]),
            "final_wait_p50_ms": _pct(finals, 50), "final_wait_p95_ms": _pct(finals, 95),
            "final_missing": len(runs[way]) - len(finals),
            "wasted_s": sum(r["wasted_ms"] for r in runs[way]) / 1000,
            "stopped": sum(r["stopped"] for r in runs[way]),
        }  # fmt: skip
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
