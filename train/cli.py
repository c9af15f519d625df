"""`hmer-train`: train from a TOML config (`hmer-train finetune` is added by the fine-tuning issue)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace

from train.config import TrainConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hmer-train", description="Train HMER-MTL on a CROHME-layout folder.")
    parser.add_argument("--config", required=True, help="a TOML file, or a name in train/configs/ (e.g. paper)")
    parser.add_argument("--data", required=True, help="folder with train/, 2014/, ... and captions/")
    parser.add_argument("--out", required=True, help="run folder: checkpoints, logs, curves")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    parser.add_argument("--init", help="start from these weights (project checkpoint) with a fresh optimizer")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--max-minutes", type=float, help="override [loop] max_minutes")
    parser.add_argument("--max-steps", type=int, help="override [loop] max_steps")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s: %(message)s")
    try:
        cfg = TrainConfig.load(args.config)
    except (OSError, ValueError, TypeError) as e:
        print(f"hmer-train: bad config {args.config}: {e}", file=sys.stderr)
        return 2
    overrides = {}
    if args.max_minutes is not None:
        overrides["max_minutes"] = args.max_minutes
    if args.max_steps is not None:
        overrides["max_steps"] = args.max_steps
    if overrides:
        cfg = replace(cfg, loop=replace(cfg.loop, **overrides))
    from train.trainer import Trainer  # torch import after argument errors are reported

    try:
        trainer = Trainer(cfg, args.data, args.out, resume=args.resume, device=args.device, init_from=args.init)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"hmer-train: {e}", file=sys.stderr)
        return 2
    try:
        result = trainer.run()
    finally:
        trainer.close()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
