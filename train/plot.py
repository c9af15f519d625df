"""Training curves from metrics.jsonl as a PNG (matplotlib, no display needed)."""

from __future__ import annotations

import json
import os
from pathlib import Path


def read_metrics(path: Path) -> list[dict]:
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a crash
    return records


def plot_metrics(metrics_path: str | Path, png_path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(Path(metrics_path))
    train = [r for r in records if r.get("event") == "train"]
    val = [r for r in records if r.get("event") == "val"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        steps = [r["step"] for r in train]
        ax1.plot(steps, [r["loss_main"] for r in train], label="main CE", lw=1)
        ax1.plot(steps, [r["loss_aux"] for r in train], label="structure CE", lw=1)
        ax1.set_yscale("log")
        ax1.legend()
    ax1.set_xlabel("step")
    ax1.set_title("training loss")
    if val:
        ax2.plot([r["step"] for r in val], [r["exprate"] for r in val], "o-", label="ExpRate")
        ax2.plot([r["step"] for r in val], [r["le1"] for r in val], ".--", label="<=1 error")
        ax2.legend()
    ax2.set_xlabel("step")
    ax2.set_ylabel("%")
    ax2.set_title("validation (greedy)")
    fig.tight_layout()
    png_path = Path(png_path)
    tmp = png_path.with_name(f".{png_path.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, png_path)
