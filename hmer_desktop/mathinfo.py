"""What the app shows about a LaTeX string besides the string: the typeset image
(matplotlib mathtext) and sympy's reading (parsed, simplified, evaluated, MathML). Qt-free."""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


class TypesetError(ValueError):
    """mathtext cannot render this LaTeX; the message says why."""


def compact(latex: str) -> str:
    """`x ^ { 2 }` -> `x^{2}`: spaces only where LaTeX needs them (after a command word
    that a letter follows). mathtext misreads scripts written with spaces around them."""
    out = ""
    for tok in latex.split():
        if out and out[-1].isalpha() and tok[0].isalpha() and "\\" in out and out.rsplit("\\", 1)[-1].isalpha():
            out += " "
        out += tok
    return out


def for_mathtext(latex: str) -> str:
    # mathtext has no \limits (it only moves the limits)
    return compact(" ".join(t for t in latex.split() if t != "\\limits"))


def typeset_png(latex: str, dpi: int = 140, color: str = "black") -> bytes:
    if not latex.strip():
        raise TypesetError("nothing to typeset")
    import matplotlib  # here: sympy's process (`math_reader`) imports this module, not matplotlib

    matplotlib.use("Agg")
    from matplotlib import mathtext

    buf = io.BytesIO()
    try:
        mathtext.math_to_image(f"${for_mathtext(latex)}$", buf, dpi=dpi, format="png", color=color)
    except Exception as e:  # mathtext raises ValueError with a caret diagram
        first = str(e).strip().splitlines()
        reason = first[-1].strip() if first else type(e).__name__
        raise TypesetError(f"mathtext cannot typeset this ({reason or 'syntax error'})") from e
    return buf.getvalue()


@dataclass(frozen=True)
class MathReading:
    ok: bool
    parsed: str = ""
    simplified: str = ""
    value: str = ""  # a number, where the expression evaluates to one
    mathml: str = ""  # presentation MathML
    error: str = ""


def read_math(latex: str) -> MathReading:
    """sympy's understanding of the expression; failures are described, never raised."""
    try:
        import sympy
        from sympy.parsing.latex import parse_latex

        expr = parse_latex(for_mathtext(latex))
    except Exception as e:  # sympy raises many kinds for unparsable input
        return MathReading(ok=False, error=f"sympy cannot read this as mathematics ({type(e).__name__})")
    try:
        mathml = sympy.mathml(expr, printer="presentation")
        if isinstance(expr, sympy.Equality):
            simplified = sympy.simplify(expr.lhs - expr.rhs)
            holds = simplified == 0 if simplified.is_number else None
            value = "" if holds is None else ("the equation holds" if holds else "the equation does not hold")
            return MathReading(True, str(expr), f"{sympy.simplify(expr.lhs)} = {sympy.simplify(expr.rhs)}", value, mathml)
        simplified = sympy.simplify(expr)
        value = ""
        if simplified.is_number:
            try:
                value = str(simplified) if simplified.is_Rational else str(sympy.N(simplified, 10))
            except (TypeError, ValueError):
                value = ""
        return MathReading(True, str(expr), str(simplified), value, mathml)
    except Exception as e:
        return MathReading(ok=True, parsed=str(expr), error=f"sympy could not simplify it ({type(e).__name__})")


@dataclass(frozen=True)
class Rendering:
    """Everything the results panel shows about one LaTeX string besides the string."""

    latex: str
    png: bytes | None  # the typeset image; None where mathtext cannot typeset it
    typeset_error: str  # why not, in words ("" when it could)
    reading: MathReading


def render(latex: str, read: Callable[[str], MathReading] = read_math) -> Rendering:
    """Typeset `latex` and `read` it (with sympy: about 35 ms at the median of 300 CROHME 2016
    expressions, 135 ms at p95, and without end for some: `math_reader.MathReader` bounds
    it). Never raises."""
    try:
        png, error = typeset_png(latex, dpi=160), ""
    except TypesetError as e:
        png, error = None, str(e)
    return Rendering(latex, png, error, read(latex))


class LatestOnly:
    """Runs jobs one at a time on a daemon thread of its own, and only the latest: a job
    submitted while another waits replaces it. While a person writes, each stroke's reading
    asks for a rendering; only the newest is worth waiting for. A daemon thread, so that a
    long simplification never holds up quitting."""

    def __init__(self, name: str) -> None:
        self._pending: Callable[[], None] | None = None
        self._closed = False
        self._ready = threading.Condition()
        self.thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self.thread.start()

    def submit(self, job: Callable[[], None]) -> None:
        with self._ready:
            self._pending = job
            self._ready.notify()

    def close(self) -> None:
        """Drop what waits; the thread ends after the job it runs, if any."""
        with self._ready:
            self._closed, self._pending = True, None
            self._ready.notify()

    def _serve(self) -> None:
        while True:
            with self._ready:
                while self._pending is None and not self._closed:
                    self._ready.wait()
                if self._closed:
                    return
                job, self._pending = self._pending, None
            try:
                job()
            except Exception:  # a job that fails must not end the thread that serves the next
                log.exception("a background job failed")
