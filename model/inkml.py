"""Reading and writing InkML (the CROHME dialect): pen traces plus the LaTeX truth."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

from model.atomic import atomic_write

NS = "{http://www.w3.org/2003/InkML}"


class InkMLError(ValueError):
    """An InkML file that cannot be read; the message names the file and the problem."""


@dataclass
class SymbolGroup:
    truth: str
    trace_ids: list[str]


@dataclass
class InkSample:
    id: str  # file stem
    traces: list[np.ndarray]  # each [n, 2] float64 x, y
    truth: str | None  # raw LaTeX of the expression, e.g. "$x^2$"
    writer: str | None = None
    trace_ids: list[str] = field(default_factory=list)
    symbols: list[SymbolGroup] = field(default_factory=list)


def _tag(el: ET.Element) -> str:
    return el.tag.split("}", 1)[-1]


def _parse_points(text: str, where: str) -> np.ndarray:
    rows = []
    for chunk in (text or "").split(","):
        nums = chunk.split()
        if not nums:
            continue
        if len(nums) < 2:
            raise InkMLError(f"{where}: a point needs x and y, got {chunk.strip()!r}")
        try:
            rows.append((float(nums[0]), float(nums[1])))
        except ValueError as e:
            raise InkMLError(f"{where}: bad number in point {chunk.strip()!r}") from e
    return np.array(rows, dtype=np.float64).reshape(-1, 2)


def parse_inkml(data: bytes, name: str = "<inkml>") -> InkSample:
    """Parse InkML bytes. Non-UTF-8 files are decoded as Latin-1, as CROHME needs."""
    if not data.strip():
        raise InkMLError(f"{name}: the file is empty")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    text = re.sub(r"^\s*<\?xml[^>]*\?>", "", text)  # the declaration may name another encoding
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise InkMLError(f"{name}: not well-formed XML ({e})") from e
    if _tag(root) != "ink":
        raise InkMLError(f"{name}: the root element is <{_tag(root)}>, not <ink>")
    truth = writer = None
    for child in root:
        if _tag(child) == "annotation":
            kind = child.get("type")
            if kind == "truth" and truth is None:
                truth = (child.text or "").strip()
            elif kind == "writer":
                writer = (child.text or "").strip()
    traces, ids = [], []
    for el in root.iter(f"{NS}trace"):
        tid = el.get("id", str(len(ids)))
        traces.append(_parse_points(el.text or "", f"{name}, trace {tid}"))
        ids.append(tid)
    if not traces:  # inkml without namespace
        for el in root.iter("trace"):
            tid = el.get("id", str(len(ids)))
            traces.append(_parse_points(el.text or "", f"{name}, trace {tid}"))
            ids.append(tid)
    if not traces:
        raise InkMLError(f"{name}: the file has no traces")
    symbols = []
    for group in root.iter(f"{NS}traceGroup"):
        gtruth = None
        for child in group:
            if _tag(child) == "annotation" and child.get("type") == "truth":
                gtruth = (child.text or "").strip()
        refs = [v.get("traceDataRef") for v in group if _tag(v) == "traceView"]
        if gtruth is not None and refs:
            symbols.append(SymbolGroup(gtruth, [r for r in refs if r]))
    stem = Path(name).stem
    return InkSample(id=stem, traces=traces, truth=truth, writer=writer, trace_ids=ids, symbols=symbols)


def read_inkml(path: str | Path) -> InkSample:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise InkMLError(f"{path}: no such file") from e
    except OSError as e:
        raise InkMLError(f"{path}: cannot be read ({e.strerror})") from e
    return parse_inkml(data, str(path))


def inkml_text(traces: list[np.ndarray], truth: str | None, writer: str | None = None, ui: str | None = None) -> str:
    """CROHME-style InkML for strokes and a LaTeX truth (readable by `read_inkml`)."""
    lines = ['<ink xmlns="http://www.w3.org/2003/InkML">']
    lines += ['<traceFormat>', '<channel name="X" type="decimal"/>', '<channel name="Y" type="decimal"/>', "</traceFormat>"]
    if truth is not None:
        lines.append(f'<annotation type="truth">{escape(truth)}</annotation>')
    if writer is not None:
        lines.append(f'<annotation type="writer">{escape(writer)}</annotation>')
    if ui is not None:
        lines.append(f'<annotation type="UI">{escape(ui)}</annotation>')
    for i, trace in enumerate(traces):
        pts = ", ".join(f"{x:.6g} {y:.6g}" for x, y in np.asarray(trace, dtype=np.float64)[:, :2])
        lines.append(f'<trace id="{i}">{pts}</trace>')
    lines.append("</ink>")
    return "\n".join(lines) + "\n"


def write_inkml(path: str | Path, traces: list[np.ndarray], truth: str | None, writer: str | None = None) -> None:
    """Write atomically: a crash leaves any previous file intact."""
    path = Path(path)
    data = inkml_text(traces, truth, writer, ui=path.stem).encode("utf-8")
    atomic_write(path, lambda f: f.write(data))
