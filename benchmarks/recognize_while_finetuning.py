"""Recognition time while a fine-tune runs in the same process, as in the app.

The app fine-tunes on a background thread and keeps recognizing on another. On a
2-core CPU both would use two intra-op threads by default: four busy threads on two
cores, where a parallel operation can wait at its barrier for a thread that is not
running. This times the app's recognition of real expressions alone,
then again while a fine-tune (the app's: `train.finetune.finetune` on expressions of
the training split as the user's samples, no replay) trains on another thread, with
the thread counts given for each side.

    python benchmarks/recognize_while_finetuning.py --data ../shared/datasets/crohme --limit 30
    python benchmarks/recognize_while_finetuning.py --data ... --finetune-threads 1 --recognize-threads 1

`--finetune-threads` (0: torch's default) is set in the fine-tune's thread and
`--recognize-threads` is the recognizer's cap (`Recognizer.threads`, 0: none), as the
app sets them while it fine-tunes (`thread_split` in `hmer_desktop/finetune_service.py`:
one each on 2 cores). `--app-split` uses the app's split for this machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hmer_desktop.finetune_service import cpu_count, thread_split  # noqa: E402
from model.paths import BUNDLED_CHECKPOINT, asset_path  # noqa: E402
from model.recognizer import Recognizer  # noqa: E402
from train.data import load_split  # noqa: E402
from train.finetune import FinetuneConfig, finetune  # noqa: E402


def _times(rec: Recognizer, examples, beam: int) -> list[float]:
    out = []
    for ex in examples:
        rec.forget_encoding()  # new ink each time, as when a person draws
        t = time.perf_counter()
        rec.recognize(ex.strokes, beam)
        out.append((time.perf_counter() - t) * 1000)
    return out


def _summary(ms: list[float]) -> dict:  # percentiles as latency.py takes them
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "mean_ms": float(np.mean(ms))}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="2014", help="the expressions recognized")
    parser.add_argument("--limit", type=int, default=30)
    parser.add_argument("--beam", type=int, default=10)
    parser.add_argument("--samples", type=int, default=40, help="training expressions fine-tuned on")
    parser.add_argument("--finetune-threads", type=int, default=0)
    parser.add_argument("--recognize-threads", type=int, default=0)
    parser.add_argument("--app-split", action="store_true", help="the app's split of this machine's CPUs")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.app_split:
        args.finetune_threads, args.recognize_threads = thread_split(cpu_count())

    checkpoint = asset_path(BUNDLED_CHECKPOINT)
    rec = Recognizer.load(checkpoint, device="cpu")
    examples, _ = load_split(args.data, args.split, rec.vocab, limit=args.limit)
    samples, _ = load_split(args.data, "train", rec.vocab, limit=args.samples)
    default_threads = torch.get_num_threads()
    rec.recognize(examples[0].strokes, args.beam)  # warm-up
    alone = _times(rec, examples, args.beam)

    started, cancel, steps = threading.Event(), threading.Event(), [0]

    def progress(step: int, total: int, info: dict) -> None:
        steps[0] = step
        started.set()

    def run_finetune(out: Path) -> None:
        if args.finetune_threads:
            torch.set_num_threads(args.finetune_threads)  # this thread's own pool
        config = FinetuneConfig(max_steps=100_000, eval_every=100_000, max_forgetting=None)
        try:
            finetune(checkpoint, samples, out, config, progress=progress, cancel=cancel)
        finally:
            started.set()

    with tempfile.TemporaryDirectory() as tmp:
        worker = threading.Thread(target=run_finetune, args=(Path(tmp) / "ft.pt",), daemon=True)
        worker.start()
        started.wait()  # its first training step is done: from here on it only trains
        rec.threads = args.recognize_threads
        first_step, t0 = steps[0], time.perf_counter()
        during = _times(rec, examples, args.beam)
        finetune_steps_per_s = (steps[0] - first_step) / (time.perf_counter() - t0)
        still_training = worker.is_alive()
        cancel.set()
        worker.join()
    torch.set_num_threads(default_threads)
    if not still_training:
        print("the fine-tune ended before the measurement did: the figures are not under load", file=sys.stderr)
        return 1
    report = {
        "checkpoint": str(checkpoint), "split": args.split, "n": len(examples), "beam": args.beam,
        "default_threads": default_threads, "finetune_threads": args.finetune_threads or default_threads,
        "recognize_threads": args.recognize_threads or default_threads,
        "alone": _summary(alone), "during_finetune": _summary(during),
        "finetune_steps_per_s": finetune_steps_per_s,
    }  # fmt: skip
    report["slowdown_p50"] = report["during_finetune"]["p50_ms"] / report["alone"]["p50_ms"]
    report["slowdown_mean"] = report["during_finetune"]["mean_ms"] / report["alone"]["mean_ms"]
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
