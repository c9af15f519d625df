"""`hmer-train`: train from a TOML config; `hmer-train finetune`: adapt a model to your samples;
`hmer-train export` / `hmer-train average`: write a checkpoint for shipping."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace

from train.config import TrainConfig


def finetune_main(argv: list[str]) -> int:
    from train.finetune import TRAINABLE, FinetuneConfig  # its defaults are this command's

    default = FinetuneConfig()
    parser = argparse.ArgumentParser(prog="hmer-train finetune", description="Fine-tune on your collected samples.")
    parser.add_argument("--samples", required=True, help="the app's sample database (samples.db)")
    parser.add_argument("--base", required=True, help="checkpoint to start from")
    parser.add_argument("--out", required=True, help="where to write the new checkpoint")
    parser.add_argument("--data", help="CROHME-layout folder: replay its training data, report on a 2014 subset")
    parser.add_argument("--steps", type=int, default=default.max_steps,
                        help=f"at most this many steps (default {default.max_steps})")
    parser.add_argument("--lr", type=float, default=default.lr,
                        help=f"learning rate (default {default.lr:g})")
    parser.add_argument("--trainable", choices=TRAINABLE, default=default.trainable,
                        help="encoder: adapt to the handwriting, keep the decoder; norm: only the encoder's "
                        f"normalization scales and shifts; all: every weight (default {default.trainable})")
    parser.add_argument("--keep", type=float, default=default.keep,
                        help="share of the fine-tune's weight change kept, the rest of the way back to --base "
                        f"(default {default.keep:g}; 1 keeps all of it)")
    parser.add_argument("--max-forgetting", type=float, default=default.max_forgetting,
                        help="ExpRate points the 2014 check (needs --data) may lose; beyond that a smaller "
                        f"share of the weight change is kept (default {default.max_forgetting:g})")
    parser.add_argument("--json", dest="json_out", help="write the report here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s: %(message)s")

    from pathlib import Path

    from model.checkpoint import CheckpointError
    from train.data import Example
    from train.finetune import crohme_replay_and_check, finetune
    from train.samples import SampleError, SampleStore

    if not Path(args.samples).is_file():
        print(f"hmer-train finetune: no sample database at {args.samples} (the app keeps samples.db in "
              "its data folder, ~/.local/share/hmer on Linux)", file=sys.stderr)
        return 2
    try:
        store = SampleStore(args.samples)
        samples = [Example(f"sample{s.id}", s.strokes, s.tokens, source=f"sample {s.id}") for s in store.samples()]
        replay = base_eval = None
        if args.data:
            replay, base_eval = crohme_replay_and_check(args.data, store.vocab)
        config = FinetuneConfig(max_steps=args.steps, lr=args.lr, trainable=args.trainable, keep=args.keep,
                                max_forgetting=args.max_forgetting)
        report = finetune(args.base, samples, args.out, config, replay=replay, base_eval=base_eval)
        if report.output:
            store.add_model(report.output, store.active_model(), report.to_dict(), note=f"from {args.base}")
    except (CheckpointError, SampleError, ValueError, FileNotFoundError) as e:
        print(f"hmer-train finetune: {e}", file=sys.stderr)
        return 2
    for note in report.notes:
        print(f"note: {note}")
    print(json.dumps(report.to_dict(), indent=2))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report.to_dict(), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["finetune"]:
        return finetune_main(argv[1:])
    if argv[:1] == ["export"]:
        from train.export import main as export_main

        return export_main(argv[1:])
    if argv[:1] == ["average"]:
        from train.export import average_main

        return average_main(argv[1:])
    if argv[:1] == ["recalibrate-bn"]:
        from train.recalibrate import main as recalibrate_main

        return recalibrate_main(argv[1:])
    parser = argparse.ArgumentParser(prog="hmer-train", description="Train HMER-MTL on a CROHME-layout folder "
                                     "(`hmer-train finetune ...`: on your own samples; `hmer-train export ...`: "
                                     "a checkpoint for shipping; `hmer-train average OUT A B ...`: the mean of "
                                     "several checkpoints' weights; `hmer-train recalibrate-bn CKPT OUT --data DIR`: "
                                     "its BatchNorm statistics measured anew).")  # fmt: skip
    parser.add_argument("--config", required=True, help="a TOML file, or a name in train/configs/ (e.g. paper)")
    parser.add_argument("--data", required=True, help="folder with train/, 2014/, ... and captions/")
    parser.add_argument("--out", required=True, help="run folder: checkpoints, logs, curves")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    parser.add_argument("--init", help="start from these weights (project checkpoint) with a fresh optimizer; "
                        "its network must match the config's, its rasterizer settings may differ")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--max-minutes", type=float, help="override [loop] max_minutes")
    parser.add_argument("--max-steps", type=int, help="override [loop] max_steps")
    parser.add_argument("--max-epochs", type=int, help="override [loop] max_epochs (a cosine schedule spans them)")
    parser.add_argument("--budget-minutes", type=float, help="override [loop] budget_minutes")
    parser.add_argument("--seed", type=int, help="override [loop] seed (batches, augmentation draws, dropout): "
                        "runs of one recipe from one start that differ only here can be averaged")
    parser.add_argument("--num-workers", type=int,
                        help="override [data] num_workers (two runs sharing one machine split its cores)")
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
    if args.max_epochs is not None:
        if args.max_epochs < 1:
            print("hmer-train: --max-epochs must be at least 1", file=sys.stderr)
            return 2
        overrides["max_epochs"] = args.max_epochs
    if args.budget_minutes is not None:
        overrides["budget_minutes"] = args.budget_minutes
    if args.seed is not None:
        overrides["seed"] = args.seed
    try:
        cfg = replace(cfg, loop=replace(cfg.loop, **overrides))
    except ValueError as e:  # the config's own checks (a negative --seed)
        print(f"hmer-train: {e} (set on the command line)", file=sys.stderr)
        return 2
    if args.num_workers is not None:
        if args.num_workers < 0:
            print("hmer-train: --num-workers must be 0 or more", file=sys.stderr)
            return 2
        cfg = replace(cfg, data=replace(cfg.data, num_workers=args.num_workers))
    from train.trainer import Trainer  # torch import after argument errors are reported

    try:
        trainer = Trainer(cfg, args.data, args.out, resume=args.resume, device=args.device, init_from=args.init)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"hmer-train: {e}", file=sys.stderr)
        return 2
    try:
        result = trainer.run()
    except BaseException:
        trainer.close(finished=False)
        raise
    trainer.close()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
