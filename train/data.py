"""CROHME-layout data: reading a split, rendering with augmentation, size-bucketed batches.

A data directory holds one folder (or .zip) of InkML files per split and,
optionally, `captions/<split>.txt` with `NAME<TAB>tokens` lines. Captions are
the ground truth when present; otherwise the InkML truth is tokenized.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from model.config import RasterConfig
from model.hmer import Targets, bidirectional_targets
from model.inkml import InkMLError, InkSample, parse_inkml
from model.rasterize import InkError, clean_strokes, layout, rasterize
from model.vocab import UnknownTokenError, Vocabulary
from train.augment import AugmentConfig, augment_strokes
from train.latex import tokenize

log = logging.getLogger(__name__)


@dataclass
class Example:
    id: str
    strokes: list[np.ndarray]
    tokens: list[str]
    writer: str | None = None
    source: str = ""  # file or zip member it came from
    # The InkML's symbol segmentation, where it has one: (symbol, indices into strokes) per symbol.
    symbols: list[tuple[str, tuple[int, ...]]] | None = None


@dataclass
class LoadReport:
    """What a split load skipped, by name, so nothing is dropped silently."""

    unreadable: list[tuple[str, str]]  # (file, reason)
    no_label: list[str]
    no_file: list[str]  # caption lines without an InkML file
    bad_label: list[tuple[str, str]]  # (id, reason)

    def lines(self) -> list[str]:
        out = [f"unreadable {n}: {r}" for n, r in self.unreadable]
        out += [f"no label for {n}" for n in self.no_label]
        out += [f"caption without InkML file: {n}" for n in self.no_file]
        out += [f"bad label {n}: {r}" for n, r in self.bad_label]
        return out


def read_captions(path: Path) -> dict[str, list[str]]:
    """`NAME<TAB>tokens` lines; the token ' becomes \\prime (the CROHME dictionary's name)."""
    captions = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        name, _, text = line.partition("\t")
        captions[name.strip()] = ["\\prime" if t == "'" else t for t in text.split()]
    return captions


def iter_inkml(source: Path) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every .inkml file in a folder tree or a .zip, in sorted order."""
    if source.is_file() and source.suffix == ".zip":
        with zipfile.ZipFile(source) as zf:
            for name in sorted(n for n in zf.namelist() if n.endswith(".inkml")):
                yield f"{source}/{name}", zf.read(name)
    elif source.is_dir():
        for path in sorted(source.rglob("*.inkml")):
            yield str(path), path.read_bytes()
    else:
        raise FileNotFoundError(f"no InkML folder or .zip at {source}")


def split_source(data_dir: Path, split: str) -> Path:
    for candidate in (data_dir / split, data_dir / f"{split}.zip"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"split {split!r} not found: expected {data_dir / split}/ or {data_dir / split}.zip")


def load_split(data_dir: str | Path, split: str, vocab: Vocabulary, limit: int | None = None) -> tuple[list[Example], LoadReport]:
    data_dir = Path(data_dir)
    source = split_source(data_dir, split)
    caption_file = data_dir / "captions" / f"{split}.txt"
    captions = read_captions(caption_file) if caption_file.exists() else None
    report = LoadReport([], [], [], [])
    examples: list[Example] = []
    seen = set()
    for name, data in iter_inkml(source):
        if limit is not None and len(examples) >= limit:
            break
        try:
            sample: InkSample = parse_inkml(data, name)
            clean_strokes(sample.traces)
        except (InkMLError, InkError) as e:
            report.unreadable.append((name, str(e)))
            continue
        seen.add(sample.id)
        if captions is not None:
            tokens = captions.get(sample.id)
            if tokens is None:
                report.no_label.append(name)
                continue
        else:
            if not sample.truth:
                report.no_label.append(name)
                continue
            try:
                tokens = tokenize(sample.truth)
            except ValueError as e:
                report.bad_label.append((name, str(e)))
                continue
        try:
            vocab.encode(tokens, where=name)
        except UnknownTokenError as e:
            report.bad_label.append((name, str(e)))
            continue
        examples.append(Example(sample.id, sample.traces, tokens, sample.writer, name, _symbol_strokes(sample)))
    if captions is not None and limit is None:
        report.no_file = sorted(set(captions) - seen)
    for line in report.lines():
        log.warning("%s: %s", split, line)
    return examples, report


def _symbol_strokes(sample: InkSample) -> list[tuple[str, tuple[int, ...]]] | None:
    """Each marked symbol's stroke indices; symbols naming a trace the file lacks are left out."""
    if not sample.symbols:
        return None
    index = {tid: i for i, tid in enumerate(sample.trace_ids)}
    return [
        (group.truth, tuple(index[t] for t in group.trace_ids))
        for group in sample.symbols
        if group.trace_ids and all(t in index for t in group.trace_ids)
    ]


def nominal_size(strokes: Sequence[np.ndarray], config: RasterConfig) -> tuple[int, int]:
    """The (h, w) `rasterize` gives without augmentation, computed without drawing."""
    _, h, w = layout(clean_strokes(strokes), config)
    return h, w


class InkDataset(torch.utils.data.Dataset):
    """Renders examples with the shared rasterizer; augmentation is seeded by
    (seed, epoch, index), so a resumed run sees the very same images."""

    def __init__(
        self,
        examples: list[Example],
        vocab: Vocabulary,
        raster: RasterConfig,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        rewrite: Callable[[Example, np.random.Generator], Example | None] | None = None,
    ) -> None:
        self.examples = examples
        self.vocab = vocab
        self.raster = raster
        self.augment = augment
        self.seed = seed
        self.rewrite = rewrite  # a new caption and ink for some draws (train/substitute.py), or None
        self.epoch = 0
        self.ids = [vocab.encode(e.tokens, where=e.source) for e in examples]

    def __len__(self) -> int:
        return len(self.examples)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> tuple[np.ndarray, list[int], int]:
        ex, ids = self.examples[index], self.ids[index]
        if self.rewrite is not None:
            rewritten = self.rewrite(ex, np.random.default_rng([self.seed, self.epoch, index, 11]))
            if rewritten is not None:
                ex, ids = rewritten, self.vocab.encode(rewritten.tokens, where=rewritten.source)
        strokes, scale, line = ex.strokes, 1.0, 1.0
        if self.augment is not None and self.augment.enabled:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            strokes, scale, line = augment_strokes(strokes, self.augment, rng)
        image = rasterize(strokes, self.raster, scale_factor=scale, line_factor=line).image
        return image, ids, index


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def collate(
    items: Sequence[tuple[np.ndarray, list[int], int]],
    vocab: Vocabulary,
    shape_multiple: int = 1,
    length_multiple: int = 1,
) -> "Batch":
    """Pad a batch. `shape_multiple` rounds the image sides up and `length_multiple` the
    target length, so batches repeat a few shapes: cuDNN sets each new shape up on the
    CPU (about 2 ms a convolution), which on a GPU cost more than the training itself."""
    h = _round_up(max(img.shape[0] for img, _, _ in items), shape_multiple)
    w = _round_up(max(img.shape[1] for img, _, _ in items), shape_multiple)
    imgs = torch.zeros(len(items), 1, h, w)
    masks = torch.ones(len(items), h, w, dtype=torch.bool)
    for i, (img, _, _) in enumerate(items):
        imgs[i, 0, : img.shape[0], : img.shape[1]] = torch.from_numpy(img)
        masks[i, : img.shape[0], : img.shape[1]] = False
    seqs = [ids for _, ids, _ in items]
    targets = bidirectional_targets(seqs, vocab)
    extra = _round_up(targets.tgt.shape[1], length_multiple) - targets.tgt.shape[1]
    if extra:  # more padding positions: ignored by the loss, like any other padding
        padded = (F.pad(t, (0, extra), value=vocab.pad_id) for t in (targets.tgt, targets.out, targets.aux_out))
        targets = Targets(*padded)
    return Batch(imgs, masks, seqs, targets, [i for _, _, i in items])


@dataclass
class Batch:
    imgs: Tensor  # [b, 1, H, W]
    masks: Tensor  # [b, H, W] True = padding
    seqs: list[list[int]]
    targets: Targets
    indices: list[int]

    def to(self, device: torch.device, non_blocking: bool = False) -> "Batch":
        t = self.targets
        return Batch(
            self.imgs.to(device, non_blocking=non_blocking),
            self.masks.to(device, non_blocking=non_blocking),
            self.seqs,
            Targets(t.tgt.to(device), t.out.to(device), t.aux_out.to(device)),
            self.indices,
        )

    def pin_memory(self) -> "Batch":
        t = self.targets
        return Batch(self.imgs.pin_memory(), self.masks.pin_memory(), self.seqs,
                     Targets(t.tgt.pin_memory(), t.out.pin_memory(), t.aux_out.pin_memory()), self.indices)  # fmt: skip


def size_batches(
    sizes: Sequence[tuple[int, int]], pixel_budget: int, max_batch: int, seed: int, epoch: int, shuffle: bool = True
) -> list[list[int]]:
    """Group similar-sized images so padding stays small: sort by (h, w) with a
    little noise, cut batches whose padded pixels fit the budget, shuffle batches."""
    rng = np.random.default_rng([seed, epoch, 7])
    n = len(sizes)
    hs = np.array([s[0] for s in sizes], dtype=np.float64)
    ws = np.array([s[1] for s in sizes], dtype=np.float64)
    noise = rng.uniform(0.9, 1.1, n) if shuffle else np.ones(n)
    order = np.lexsort((ws * noise, np.round(hs * noise / 16)))
    batches: list[list[int]] = []
    cur: list[int] = []
    max_h = max_w = 0.0
    for i in order:
        h, w = max(max_h, hs[i]), max(max_w, ws[i])
        if cur and (h * w * (len(cur) + 1) > pixel_budget or len(cur) >= max_batch):
            batches.append(cur)
            cur, h, w = [], hs[i], ws[i]
        cur.append(int(i))
        max_h, max_w = h, w
    if cur:
        batches.append(cur)
    if shuffle:
        perm = rng.permutation(len(batches))
        batches = [batches[i] for i in perm]
    return batches

