"""How much the n-best list holds, and whether another scoring of it reads more
expressions correctly.

For every expression of a split, the bundled (or given) model's beam search finds
its hypotheses in both directions; each is then scored teacher-forced in both
directions by the main head, by the structure head, and by any companion
checkpoints (`--rescore`). Reported:

* `oracle`: the truth is among the hypotheses at all;
* `top_k`: the truth is among the first k under the search's own ranking (the
  reference's sum of the two directions' length-normalized log-probabilities; k = 5
  is what the app offers as alternatives);
* `rerank`: ExpRate when the best hypothesis is picked by another score: other
  length exponents, the structure head's log-probability added with a weight, the
  companion checkpoints' scores added.

    python benchmarks/nbest_rerank.py --data ../shared/datasets/crohme --split 2014 --json out.json
    python benchmarks/nbest_rerank.py --data ... --split 2016 --rescore other.pt
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.beam import beam_search_memory  # noqa: E402
from model.checkpoint import load_checkpoint  # noqa: E402
from model.hmer import HMER, direction_targets  # noqa: E402
from model.paths import BUNDLED_CHECKPOINT, asset_path  # noqa: E402
from model.recognizer import length_limit  # noqa: E402
from model.vocab import Vocabulary  # noqa: E402
from train.data import Example, load_split  # noqa: E402
from train.evaluate import image_tensors  # noqa: E402

TOP_K = (1, 2, 3, 5, 10)
ALPHAS = (0.8, 1.2, 1.5)
AUX_WEIGHTS = (0.25, 0.5, 1.0)


@torch.inference_mode()
def encode(model: HMER, example: Example) -> tuple[torch.Tensor, torch.Tensor]:
    return model.encode(*image_tensors(example, model, torch.device("cpu")))


@torch.inference_mode()
def direction_logprobs(
    model: HMER, vocab: Vocabulary, memory: torch.Tensor, mem_mask: torch.Tensor, seqs: list[tuple[int, ...]]
) -> dict[str, list[float]]:
    """Teacher-forced log-probability sums of each sequence: main and structure heads, both directions."""
    structure = torch.tensor(vocab.structure_of, dtype=torch.long)
    out: dict[str, list[float]] = {}
    for reverse, name in ((False, "l2r"), (True, "r2l")):
        tgt, target = direction_targets(seqs, vocab, reverse=reverse)
        main, aux, _ = model.decoder(memory, mem_mask, tgt, image_index=torch.zeros(len(seqs), dtype=torch.long))
        nll = F.cross_entropy(main.float().transpose(1, 2), target, ignore_index=vocab.pad_id, reduction="none")
        aux_nll = F.cross_entropy(aux.float().transpose(1, 2), structure[target], ignore_index=vocab.pad_id, reduction="none")
        out[name] = (-nll.sum(1)).tolist()
        out[f"aux_{name}"] = (-aux_nll.sum(1)).tolist()
    return out


def pick(hyps: list[dict], models: list[str], alpha: float = 1.0, aux: float = 0.0) -> dict:
    """The hypothesis with the best (sum over models of both directions + aux weight x
    structure log-probability) / (tokens + 1) ** alpha."""

    def score(h: dict) -> float:
        total = sum(h[m]["l2r"] + h[m]["r2l"] for m in models) + aux * (h["main"]["aux_l2r"] + h["main"]["aux_r2l"])
        return total / (len(h["ids"]) + 1) ** alpha

    return max(hyps, key=score)


def summarize(records: list[list[dict]], companions: list[str]) -> dict:
    n = len(records)
    found = [r for r in records if r]

    def rate(count: int) -> float:
        return round(100.0 * count / n, 2) if n else 0.0

    ranks = []
    for hyps in found:
        ranked = sorted(hyps, key=lambda h: -(h["main"]["l2r"] + h["main"]["r2l"]) / (len(h["ids"]) + 1))
        ranks.append(next((i for i, h in enumerate(ranked) if h["ok"]), None))
    rerank = {"reference": rate(sum(pick(h, ["main"])["ok"] for h in found))}
    for alpha in ALPHAS:
        rerank[f"alpha_{alpha}"] = rate(sum(pick(h, ["main"], alpha=alpha)["ok"] for h in found))
    for weight in AUX_WEIGHTS:
        rerank[f"aux_{weight}"] = rate(sum(pick(h, ["main"], aux=weight)["ok"] for h in found))
    for name in companions:
        rerank[f"main+{name}"] = rate(sum(pick(h, ["main", name])["ok"] for h in found))
    if len(companions) > 1:
        rerank["main+all"] = rate(sum(pick(h, ["main", *companions])["ok"] for h in found))
    return {
        "n": n,
        "oracle": rate(sum(r is not None for r in ranks)),
        "top_k": {str(k): rate(sum(r is not None and r < k for r in ranks)) for k in TOP_K},
        "mean_hypotheses": round(sum(len(h) for h in found) / n, 2) if n else 0.0,
        "rerank": rerank,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="2014")
    parser.add_argument("--checkpoint", type=Path, help=f"the searching model (default: assets/{BUNDLED_CHECKPOINT})")
    parser.add_argument("--rescore", type=Path, action="append", default=[], help="a companion checkpoint (repeatable)")
    parser.add_argument("--beam", type=int, default=10)
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    model, vocab, _ = load_checkpoint(args.checkpoint or asset_path(BUNDLED_CHECKPOINT))
    models = {"main": model.eval()}
    for i, path in enumerate(args.rescore):
        other, other_vocab, _ = load_checkpoint(path)
        if other_vocab != vocab:
            parser.error(f"{path} has another vocabulary than the searching model")
        models[f"{i + 1}:{path.stem}"] = other.eval()
    examples, _ = load_split(args.data, args.split, vocab, limit=args.limit or None)
    records: list[list[dict]] = []
    for ex in tqdm(examples, desc="n-best", mininterval=2, dynamic_ncols=True):
        memory, mem_mask = encode(model, ex)
        with torch.inference_mode():
            hyps = beam_search_memory(model, memory, mem_mask, vocab, args.beam, length_limit(len(ex.strokes)))[0]
        seqs = [h.ids for h in hyps]
        if not seqs:
            records.append([])
            continue
        scores = {"main": direction_logprobs(model, vocab, memory, mem_mask, seqs)}  # the search's encoding, reused
        for name, other in models.items():
            if name != "main":
                scores[name] = direction_logprobs(other, vocab, *encode(other, ex), seqs)
        records.append([{"ids": list(s), "ok": vocab.decode(s) == list(ex.tokens),
                         **{name: {k: v[i] for k, v in sc.items()} for name, sc in scores.items()}}
                        for i, s in enumerate(seqs)])  # fmt: skip
    report = {"split": args.split, "checkpoint": str(args.checkpoint or BUNDLED_CHECKPOINT), "beam": args.beam,
              "rescore": [str(p) for p in args.rescore], **summarize(records, [k for k in models if k != "main"])}  # fmt: skip
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
