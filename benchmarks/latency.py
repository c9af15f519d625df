"""End-to-end recognition latency (strokes -> Prediction, batch of one) on real
expressions, against the reference's straightforward beam search (the whole
prefix re-decoded at every step, no cache) on the same weights and inputs.

Two baselines, both re-decoding the whole prefix at every step:

* `baseline` is the reference's search as it ran: every direction's beams stay in
  the batch until both directions are done (a finished direction was fed padding),
  and the length bound is `--max-len` alone;
* `no_cache` is this project's search with only the cache taken away: a finished
  direction leaves the batch, the length bound follows the number of strokes
  (`length_limit`) and beams are pruned, as in `Recognizer`. Its ratio is what the
  cache alone gains.

The timed search prunes beams as the app does (`--prune`, default the app's
threshold; `none` times the exact search) and, on a CPU with bf16 units, computes
the ARM's convolution in bf16 as the app does (`--fp32-arm`, or the exact search:
in fp32); the
reference baseline never prunes and computes in fp32, so `identical` is how often
the app's reading is the reference's.

    python benchmarks/latency.py --data ../shared/datasets/crohme --split 2014 --limit 100 --json out.json
    python benchmarks/latency.py --data ... --split 2014 --preset paper --max-len 60   # random paper weights
    python benchmarks/latency.py --data ... --no-baseline --against OLD.pt   # A/B of two checkpoints
    python benchmarks/latency.py --data ... --no-baseline --against assets/hmer_small.pt --against-prune none

`--against` times a second checkpoint on the same expressions in the same process,
alternating which of the two goes first, so that the machine's drift (tens of
percent between runs here) falls on both alike; each reads the ink with its own
rasterizer settings. The report adds its p50 / p95, the ratios and how many
readings agree.

`--floor` says how far each time is from what the arithmetic alone costs on this
machine: it counts each recognition's floating-point operations (matrix products,
convolutions, attention; `torch.utils.flop_counter`) and divides them by the
fastest fp32 rate measured here on a large matrix product or on the ARM's
convolution. No implementation of the same search in fp32 can beat that floor;
the ratio of a measured time to it is what overhead and memory traffic cost.

    python benchmarks/latency.py --data ... --split 2014 --limit 60 --no-baseline --floor

`--compiled` times the app's compiled decoder step (`model/compiled_step.py`);
`--compiled --no-baseline --against SAME.pt` times it against the eager step, and
with `--against-compiled --against-fp32-arm` the bf16 convolution against fp32:

    python benchmarks/latency.py --data ... --no-baseline --compiled --against assets/hmer_small.pt --against-compiled --against-fp32-arm
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.beam import beam_search_memory  # noqa: E402
from model.config import HMERConfig  # noqa: E402
from model.hmer import HMER  # noqa: E402
from model.paths import BUNDLED_CHECKPOINT  # noqa: E402
from model.prediction import Prediction  # noqa: E402
from model.rasterize import rasterize  # noqa: E402
from model.recognizer import DEFAULT_PRUNE, Recognizer, length_limit  # noqa: E402
from model.vocab import Vocabulary  # noqa: E402
from train.data import load_split  # noqa: E402


@dataclass
class _PrefixState:
    memory: torch.Tensor
    memory_mask: torch.Tensor
    image_index: torch.Tensor
    prefix: torch.Tensor  # [n, t] every token fed so far

    def reorder(self, index: torch.Tensor) -> None:
        self.image_index = self.image_index[index]
        self.prefix = self.prefix[index]


class FullPrefixDecoder:
    """The reference's decoding: each step runs the decoder over the whole prefix.

    With `rows`, the batch stays that large: the reference kept every beam of both
    directions in the batch until all were done, decoding a finished direction's rows
    too. Those rows are decoded here as well (copies of a live row, the same work) and
    their outputs dropped, so the answers are the search's own."""

    def __init__(self, model: HMER, rows: int = 0) -> None:
        self.model = model
        self.rows = rows

    def start(self, memory, memory_mask, image_index) -> _PrefixState:
        return _PrefixState(memory, memory_mask, image_index, torch.zeros(len(image_index), 0, dtype=torch.long))

    def step(self, state: _PrefixState, tokens: torch.Tensor, need_aux: bool = True):
        state.prefix = torch.cat((state.prefix, tokens[:, None]), dim=1)
        n, idx, prefix = len(tokens), state.image_index, state.prefix
        if n < self.rows:
            idx = torch.cat((idx, idx[:1].expand(self.rows - n)))
            prefix = torch.cat((prefix, prefix[:1].expand(self.rows - n, -1)))
        main, aux, _ = self.model.decoder(state.memory[idx], state.memory_mask[idx], prefix)
        return main[:n, -1], aux[:n, -1], None


def baseline_recognize(rec: Recognizer, strokes, beam: int, max_len: int, reference: bool = True) -> list[int]:
    """The reference's search (early_stopping False) with full-prefix decoding; with
    `reference` False, this project's search without its cache (see the module doc)."""
    image = rasterize(strokes, rec.config.raster).image
    with torch.inference_mode():
        imgs = torch.from_numpy(image)[None, None]
        memory, mask = rec.model.encode(imgs, torch.zeros(1, *image.shape, dtype=torch.bool))
        if reference:
            limit, decoder = max_len, FullPrefixDecoder(rec.model, rows=2 * beam)
        else:
            limit, decoder = length_limit(len(strokes), max_len), FullPrefixDecoder(rec.model)
        arm = rec.model.decoder.arm
        ours = arm.conv_dtype if arm is not None else None
        if reference and arm is not None:
            arm.conv_dtype = None  # the reference computes in fp32 throughout
        try:
            hyps = beam_search_memory(rec.model, memory, mask, rec.vocab, beam, limit, decoder=decoder,
                                      well_formed=rec.well_formed, prune=None if reference else rec.prune)  # fmt: skip
        finally:
            if arm is not None:
                arm.conv_dtype = ours
    return list(hyps[0][0].ids)


def _arm_dtype(rec: Recognizer) -> str:
    """What the ARM's convolution computed in: bf16 where the app uses it, fp32 in the exact search."""
    arm = rec.model.decoder.arm
    return "bf16" if arm is not None and arm.conv_dtype == torch.bfloat16 else "fp32"


def count_flops(rec: Recognizer, strokes, beam: int) -> int:
    """Floating-point operations of one recognition of new ink, as the app runs it. Counted
    with the eager decoder: the counter cannot see inside the compiled packages, which do the
    same arithmetic."""
    rec.forget_encoding()
    decoder = rec.model.decoder
    compiled = decoder.compiled_step, decoder.compiled_forward
    decoder.compiled_step = decoder.compiled_forward = None
    try:
        with FlopCounterMode(display=False) as counter:
            rec.recognize(strokes, beam)
    finally:
        decoder.compiled_step, decoder.compiled_forward = compiled
    return counter.get_total_flops()


def fp32_peak_flops(arm_weight: torch.Tensor | None, repeats: int = 30) -> float:
    """The fastest fp32 rate (operations per second) this machine reaches with torch's
    threads: a 1024-square matrix product, and the ARM's 5x5 convolution (`arm_weight`,
    [dc, channels, 5, 5]) on 40 maps of a 12 x 80 grid, as in a long expression's search
    step. Best of `repeats` timings of each."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    work = [(lambda: a @ b, 2 * 1024**3)]
    if arm_weight is not None:
        weight = arm_weight.detach().float()
        maps = torch.randn(40, weight.shape[1], 12, 80)
        work.append((lambda: F.conv2d(maps, weight, padding=2), 2 * 40 * 12 * 80 * weight.numel()))
    best = 0.0
    with torch.inference_mode():
        for run, flops in work:
            run()  # warm-up
            for _ in range(repeats):
                t = time.perf_counter()
                run()
                best = max(best, flops / (time.perf_counter() - t))
    return best


def _threshold(text: str) -> float | None:
    if text.lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError("a beam threshold is a positive number of nats, or none")
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="2014")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--checkpoint", type=Path, help=f"default: assets/{BUNDLED_CHECKPOINT}")
    parser.add_argument("--preset", help="time a preset with random weights instead of a checkpoint")
    parser.add_argument("--beam", type=int, default=10)
    parser.add_argument("--max-len", type=int, default=200)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--early-stopping", action="store_true", help="stop a direction once it has beam-size hypotheses")
    parser.add_argument("--free-syntax", action="store_true", help="decode without the syntax rules (model/syntax.py)")
    parser.add_argument("--against", type=Path, help="a second checkpoint, timed alternately on the same expressions")
    parser.add_argument("--prune", type=_threshold, default=DEFAULT_PRUNE, metavar="NATS|none",
                        help=f"beam threshold of the timed search (default: the app's, {DEFAULT_PRUNE}; none: exact)")
    parser.add_argument("--against-prune", type=_threshold, default=DEFAULT_PRUNE, metavar="NATS|none",
                        help="the same for --against: `--against SAME.pt --against-prune none` times pruning")
    parser.add_argument("--compiled", action="store_true",
                        help="the timed checkpoint steps through the compiled decoder step (compiled first if it "
                             "is not in the cache); with --against, the other runs eagerly")
    parser.add_argument("--floor", action="store_true",
                        help="count each recognition's operations and report the fp32 arithmetic floor")
    parser.add_argument("--fp32-arm", action="store_true",
                        help="the ARM's convolution in fp32 where the app computes it in bf16 (a CPU with bf16 units)")
    parser.add_argument("--against-fp32-arm", action="store_true", help="the same for --against")
    parser.add_argument("--against-compiled", action="store_true", help="--against with the compiled decoder too")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.preset:
        torch.manual_seed(0)
        rec = Recognizer(HMER(HMERConfig.preset(args.preset)), Vocabulary.default(), torch.device("cpu"))
        name = f"random {args.preset}"
    else:
        rec = Recognizer.load(args.checkpoint, device="cpu")
        name = str(rec.path)
    other = Recognizer.load(args.against, device="cpu") if args.against else None
    for r in (rec, other) if other else (rec,):
        r.max_len = args.max_len
        r.early_stopping = args.early_stopping
        r.well_formed = not args.free_syntax
    rec.prune = args.prune
    rec.bf16_arm = rec.bf16_arm and not args.fp32_arm
    if other:
        other.bf16_arm = other.bf16_arm and not args.against_fp32_arm
    if args.compiled:
        message = rec.use_compiled_step(compile_if_missing="now")
        print(message, file=sys.stderr)
        if not message.startswith("using"):
            print(f"latency: --compiled: {message}", file=sys.stderr)
            return 2
    if other:
        other.prune = args.against_prune
        if args.against_compiled:
            message = other.use_compiled_step(compile_if_missing="now")
            if not message.startswith("using"):
                print(f"latency: --against-compiled: {message}", file=sys.stderr)
                return 2
    examples, _ = load_split(args.data, args.split, rec.vocab, limit=args.limit)
    ours, base, same, no_cache, same_no_cache = [], [], 0, [], 0
    theirs, agree = [], 0
    flops: list[int] = []
    stages: dict[str, list[float]] = {}

    def timed(r: Recognizer, strokes) -> tuple[float, Prediction]:
        r.forget_encoding()  # each expression is new ink, as when a person draws it (the warm-up read the first)
        t = time.perf_counter()
        p = r.recognize(strokes, args.beam)
        return (time.perf_counter() - t) * 1000, p

    rec.recognize(examples[0].strokes, args.beam)  # warm-up
    if other:
        other.recognize(examples[0].strokes, args.beam)
    for i, ex in enumerate(examples):
        if other and i % 2:  # the second checkpoint first on odd expressions
            ms_other, pred_other = timed(other, ex.strokes)
            ms, pred = timed(rec, ex.strokes)
        else:
            ms, pred = timed(rec, ex.strokes)
            if other:
                ms_other, pred_other = timed(other, ex.strokes)
        ours.append(ms)
        if other:
            theirs.append(ms_other)
            agree += pred_other.tokens == pred.tokens
        for stage, stage_ms in pred.timings_ms.items():
            stages.setdefault(stage, []).append(stage_ms)
        if not args.no_baseline:
            t = time.perf_counter()
            ids = baseline_recognize(rec, ex.strokes, args.beam, args.max_len)
            base.append((time.perf_counter() - t) * 1000)
            same += rec.vocab.decode(ids) == pred.tokens
            t = time.perf_counter()
            ids = baseline_recognize(rec, ex.strokes, args.beam, args.max_len, reference=False)
            no_cache.append((time.perf_counter() - t) * 1000)
            same_no_cache += rec.vocab.decode(ids) == pred.tokens
        if args.floor:
            flops.append(count_flops(rec, ex.strokes, args.beam))
        print(f"\r{i + 1}/{len(examples)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    report = {
        "checkpoint": name, "split": args.split, "n": len(examples), "beam": args.beam, "threads": torch.get_num_threads(),
        "syntax_rules": rec.well_formed, "prune": args.prune, "compiled_step": rec.model.decoder.compiled_step is not None,
        "arm_convolution": _arm_dtype(rec),
        "p50_ms": float(np.percentile(ours, 50)), "p95_ms": float(np.percentile(ours, 95)),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "stage_p50_ms": {stage: float(np.percentile(v, 50)) for stage, v in stages.items()},
    }  # fmt: skip
    if base:
        report |= {"baseline_p50_ms": float(np.percentile(base, 50)), "baseline_p95_ms": float(np.percentile(base, 95)),
                   "speedup": float(np.percentile(base, 50) / np.percentile(ours, 50)), "identical": same / len(examples),
                   "no_cache_p50_ms": float(np.percentile(no_cache, 50)),
                   "no_cache_p95_ms": float(np.percentile(no_cache, 95)),
                   "no_cache_speedup": float(np.percentile(no_cache, 50) / np.percentile(ours, 50)),
                   "no_cache_identical": same_no_cache / len(examples)}  # fmt: skip
    if flops:
        arm = rec.model.decoder.arm
        peak = fp32_peak_flops(arm.conv.weight if arm is not None else None)
        floor_ms = [f / peak * 1000 for f in flops]
        report |= {"gflop_p50": float(np.percentile(flops, 50)) / 1e9, "gflop_p95": float(np.percentile(flops, 95)) / 1e9,
                   "fp32_peak_gflops": peak / 1e9,
                   "floor_p50_ms": float(np.percentile(floor_ms, 50)), "floor_p95_ms": float(np.percentile(floor_ms, 95)),
                   # per expression: its measured time over its floor
                   "over_floor_p50": float(np.percentile([m / f for m, f in zip(ours, floor_ms)], 50))}  # fmt: skip
    if other:
        report["against"] = {
            "checkpoint": str(other.path), "prune": other.prune, "arm_convolution": _arm_dtype(other),
            "p50_ms": float(np.percentile(theirs, 50)),
            "p95_ms": float(np.percentile(theirs, 95)), "mean_ms": float(np.mean(theirs)),
            "ratio_p50": float(np.percentile(ours, 50) / np.percentile(theirs, 50)),  # this checkpoint / the other
            "ratio_p95": float(np.percentile(ours, 95) / np.percentile(theirs, 95)),
            "ratio_mean": float(np.mean(ours) / np.mean(theirs)), "same_reading": agree / len(examples),
        }  # fmt: skip
        report["mean_ms"] = float(np.mean(ours))
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
