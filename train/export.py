"""`hmer-train export`: turn a training checkpoint into the file the app ships.

The weights are stored in half precision (restored to fp32 on load), which
halves the file; `hmer-eval` on the exported file is what the model card reports.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def export(source: str | Path, out: str | Path, half: bool = True) -> dict:
    model, vocab, meta = load_checkpoint(source)
    meta = dict(meta)
    meta.pop("train_config", None)  # kept in the run folder; the config that matters is the model's
    meta |= {"exported_from": str(source), "exported_at": time.strftime("%Y-%m-%d %H:%M:%S"),
             "weights_dtype": "float16" if half else "float32"}  # fmt: skip
    save_checkpoint(out, model, vocab, meta, half=half)
    return meta


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hmer-train export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("checkpoint", help="a run's best.pt (or any project checkpoint)")
    parser.add_argument("out", help="where to write the shipped file, e.g. assets/hmer_small.pt")
    parser.add_argument("--fp32", action="store_true", help="keep full-precision weights")
    args = parser.parse_args(argv)
    try:
        meta = export(args.checkpoint, args.out, half=not args.fp32)
    except (CheckpointError, OSError) as e:
        print(f"hmer-train export: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1e6:.1f} MB, {meta['weights_dtype']}, "
          f"step {meta.get('step', '?')})")  # fmt: skip
    return 0
