"""`hmer-recognize PATH`: LaTeX of an InkML file or an image."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hmer-recognize", description="Recognize handwritten math.")
    parser.add_argument("path", help="an .inkml file or an image (png, jpg, ...)")
    parser.add_argument("--checkpoint", help="model checkpoint (default: the bundled model)")
    parser.add_argument("--beam", type=int, default=10, help="beam size (1 = greedy)")
    parser.add_argument("--exact", action="store_true",
                        help="the reference's search: keep every beam, all in fp32 (default: drop beams far behind "
                             "the best; the ARM's convolution in bf16 on CPUs with bf16 units)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--json", action="store_true", help="print the whole prediction (minus arrays) as JSON")
    args = parser.parse_args(argv)

    from model.checkpoint import CheckpointError
    from model.inkml import InkMLError, read_inkml
    from model.rasterize import InkError
    from model.recognizer import Recognizer

    path = Path(args.path)
    try:
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file")
        if path.suffix.lower() not in IMAGE_SUFFIXES | {".inkml"}:
            raise ValueError(f"{path}: not an .inkml file or an image ({', '.join(sorted(IMAGE_SUFFIXES))})")
        recognizer = Recognizer.load(args.checkpoint, device=args.device)
        recognizer.exact_search = args.exact
        if path.suffix.lower() == ".inkml":
            prediction = recognizer.recognize(read_inkml(path).traces, beam_size=args.beam)
        else:
            from PIL import Image, UnidentifiedImageError

            try:
                with Image.open(path) as im:
                    array = np.asarray(im.convert("RGBA"))
            except (UnidentifiedImageError, OSError) as e:
                raise ValueError(f"{path}: not a readable image ({e})") from e
            prediction = recognizer.recognize_image(array, beam_size=args.beam)
    except (FileNotFoundError, ValueError, InkMLError, InkError, CheckpointError, RuntimeError) as e:
        print(f"hmer-recognize: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(prediction.to_dict(), indent=2))
    else:
        print(prediction.latex)
    return 0


if __name__ == "__main__":
    sys.exit(main())
