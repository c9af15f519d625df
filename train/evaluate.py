"""`hmer-eval`: ExpRate and <=1/2/3-error rates of a checkpoint on a CROHME-layout split."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from model.beam import beam_search
from model.checkpoint import CheckpointError, load_checkpoint
from model.greedy import greedy_search
from model.hmer import HMER
from model.paths import BUNDLED_CHECKPOINT, asset_path
from model.rasterize import rasterize
from model.recognizer import length_limit
from model.vocab import Vocabulary
from train.data import Example, load_split
from train.metrics import ExpRateCounter

log = logging.getLogger(__name__)
LENGTH_BINS = [(1, 5), (6, 10), (11, 20), (21, 40), (41, 10_000)]


def image_tensors(example: Example, model: HMER, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    image = rasterize(example.strokes, model.config.raster).image
    imgs = torch.from_numpy(image)[None, None].to(device)
    masks = torch.zeros(1, *image.shape, dtype=torch.bool, device=device)
    return imgs, masks


def evaluate_examples(
    model: HMER,
    vocab: Vocabulary,
    examples: list[Example],
    beam: int = 10,
    device: torch.device | str = "cpu",
    unreadable: list[tuple[str, str]] | None = None,
    show_progress: bool = True,
    alternatives: int = 1,
    well_formed: bool = True,
    prune: float | None = None,
) -> dict[str, Any]:
    """Decode each expression alone (as the app does) and score it against its tokens.

    With `alternatives` k > 1 (beam search only), the report also gives how often the
    truth is among the first k readings of the n-best list the app offers. well_formed
    False decodes without `model.syntax.SyntaxRules`, as the reference does; `prune`
    is the beam search's threshold (model.beam.beam_search_memory)."""
    if alternatives < 1 or (alternatives > 1 and beam <= 0):
        raise ValueError("alternatives needs beam search and must be at least 1")
    device = torch.device(device)
    model = model.to(device).eval()
    counter = ExpRateCounter()
    in_alternatives = 0
    by_length: dict[str, ExpRateCounter] = defaultdict(ExpRateCounter)
    failures = []
    for ex in tqdm(examples, desc="evaluating", disable=not show_progress, dynamic_ncols=True, mininterval=2):
        imgs, masks = image_tensors(ex, model, device)
        with torch.inference_mode():
            limit = length_limit(len(ex.strokes))  # the same bound the app uses
            if beam > 0:
                hyps = beam_search(model, imgs, masks, vocab, beam_size=beam, max_len=limit, nbest=alternatives,
                                   well_formed=well_formed, prune=prune)[0]  # fmt: skip
                readings = [vocab.decode(h.ids) for h in hyps]
            else:
                readings = [vocab.decode(greedy_search(model, imgs, masks, vocab, max_len=limit,
                                                           well_formed=well_formed)[0][0])]  # fmt: skip
        pred = readings[0]
        in_alternatives += list(ex.tokens) in readings
        dist = counter.add(pred, ex.tokens)
        lo, hi = next(b for b in LENGTH_BINS if b[0] <= len(ex.tokens) <= b[1])
        by_length[f"{lo}-{hi}" if hi < 10_000 else f">{lo - 1}"].add(pred, ex.tokens)
        if dist:
            failures.append({"id": ex.id, "distance": dist, "prediction": " ".join(pred), "truth": " ".join(ex.tokens)})
    for name, reason in unreadable or []:
        counter.add(None, [])
        failures.append({"id": Path(name).stem, "distance": None, "prediction": None, "truth": None, "error": reason})
    top = {}
    if alternatives > 1:
        top = {"alternatives": alternatives, "in_alternatives": 100.0 * in_alternatives / counter.n if counter.n else 0.0}
    return {
        "n": counter.n,
        **counter.summary(),
        **top,
        "by_length": {k: {"n": c.n, **c.summary()} for k, c in sorted(by_length.items(), key=lambda kv: int(kv[0].split("-")[0].lstrip(">")))},
        "failures": failures,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hmer-eval", description="Score a checkpoint on a CROHME-layout split.")
    parser.add_argument("--data", required=True, help="folder with SPLIT/ (InkML) and optionally captions/SPLIT.txt")
    parser.add_argument("--split", required=True, help="e.g. 2014, 2016")
    parser.add_argument("--checkpoint", help=f"default: the bundled assets/{BUNDLED_CHECKPOINT}")
    parser.add_argument("--beam", type=int, default=10, help="beam size; 0 = greedy")
    parser.add_argument("--limit", type=int, default=0, help="only the first N expressions")
    parser.add_argument("--alternatives", type=int, default=1, metavar="K",
                        help="also report how often the truth is among the first K readings (the app offers 5)")
    parser.add_argument("--free-syntax", action="store_true",
                        help="decode without the syntax rules (balanced braces, a group after ^ _ \\sqrt), "
                             "as the reference does")  # fmt: skip
    parser.add_argument("--prune", type=float, metavar="NATS",
                        help="drop beams trailing their direction's best by more than this (default: never)")
    parser.add_argument("--bf16-arm", action="store_true",
                        help="the ARM's 5x5 convolution in bf16, as the app computes it on CPUs with bf16 units "
                             "(default: fp32, the reference's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", dest="json_out", help="write the report as JSON here")
    args = parser.parse_args(argv)
    if args.alternatives < 1 or (args.alternatives > 1 and args.beam <= 0):
        parser.error("--alternatives needs --beam 1 or more, and must be at least 1")
    if args.prune is not None and not args.prune > 0:
        parser.error("--prune must be a positive number of nats")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    path = Path(args.checkpoint) if args.checkpoint else asset_path(BUNDLED_CHECKPOINT)
    try:
        model, vocab, _ = load_checkpoint(path)
    except CheckpointError as e:
        print(f"hmer-eval: {e}", file=sys.stderr)
        return 2
    if args.bf16_arm and model.decoder.arm is not None:
        model.decoder.arm.conv_dtype = torch.bfloat16
    try:
        examples, report = load_split(args.data, args.split, vocab, limit=args.limit or None)
    except FileNotFoundError as e:
        print(f"hmer-eval: {e}", file=sys.stderr)
        return 2
    start = time.monotonic()
    result = evaluate_examples(model, vocab, examples, args.beam, args.device,
                               unreadable=report.unreadable + [(n, "no label") for n in report.no_label],
                               alternatives=args.alternatives, well_formed=not args.free_syntax, prune=args.prune)  # fmt: skip
    result = {"split": args.split, "checkpoint": str(path), "beam": args.beam, "syntax_rules": not args.free_syntax,
              "prune": args.prune, "arm_convolution": "bf16" if args.bf16_arm else "fp32",
              "seconds": round(time.monotonic() - start, 2), **result}  # fmt: skip
    print(f"{args.split}: n={result['n']}  ExpRate {result['exprate']:.2f}%  <=1 {result['le1']:.2f}%  "
          f"<=2 {result['le2']:.2f}%  <=3 {result['le3']:.2f}%  ({result['seconds']:.0f} s, beam {args.beam})")  # fmt: skip
    if "in_alternatives" in result:
        print(f"  the truth among the first {args.alternatives} readings: {result['in_alternatives']:.2f}%")
    for name, row in result["by_length"].items():
        print(f"  length {name:>6}: n={row['n']:4d}  ExpRate {row['exprate']:6.2f}%")
    shown = result["failures"][:20]
    if shown:
        print(f"failures ({len(result['failures'])}, first {len(shown)}):")
        for f in shown:
            print(f"  {f['id']}: {f.get('error') or f['prediction']!s}  | truth: {f['truth']}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
