from __future__ import annotations

import numpy as np
import pytest

from model.inkml import InkMLError, parse_inkml, read_inkml, write_inkml
from tests.synthetic_ink import ink_for

VALID = b"""<ink xmlns="http://www.w3.org/2003/InkML">
<annotation type="truth">$x^2$</annotation>
<annotation type="writer">w7</annotation>
<trace id="0">1 2, 3 4 0.5, 5 6</trace>
<trace id="1">7 8</trace>
<traceGroup xml:id="g"><annotation type="truth">Segmentation</annotation>
  <traceGroup xml:id="g1"><annotation type="truth">x</annotation><traceView traceDataRef="0"/></traceGroup>
</traceGroup>
</ink>"""


def test_reads_traces_truth_writer_and_symbols():
    sample = parse_inkml(VALID, "dir/sample.inkml")
    assert sample.id == "sample" and sample.truth == "$x^2$" and sample.writer == "w7"
    np.testing.assert_array_equal(sample.traces[0], [[1, 2], [3, 4], [5, 6]])  # extra channels dropped
    assert [g.truth for g in sample.symbols] == ["x"]  # nested truths are not the expression's


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"<ink><trace>1 2", "not well-formed"),
        (b"<notink/>", "root element"),
        (b'<ink xmlns="http://www.w3.org/2003/InkML"></ink>', "no traces"),
        (b'<ink xmlns="http://www.w3.org/2003/InkML"><trace>1 a, 2 3</trace></ink>', "bad number"),
        (b'<ink xmlns="http://www.w3.org/2003/InkML"><trace>1, 2 3</trace></ink>', "needs x and y"),
    ],
)
def test_malformed_files_name_the_file_and_the_problem(data, message):
    with pytest.raises(InkMLError, match=message) as err:
        parse_inkml(data, "bad.inkml")
    assert "bad.inkml" in str(err.value)


def test_non_utf8_bytes_are_read_as_latin1():
    data = VALID.replace(b"$x^2$", b"$x^2$ \xe9")
    assert parse_inkml(data, "latin.inkml").truth == "$x^2$ \xe9"


def test_missing_file_is_an_inkml_error(tmp_path):
    with pytest.raises(InkMLError, match="no such file"):
        read_inkml(tmp_path / "missing.inkml")


def test_write_then_read_round_trip(tmp_path):
    strokes = ink_for("x ^ { 2 } = y", size=3.7)
    write_inkml(tmp_path / "s.inkml", strokes, "x ^ { 2 } = y <", writer="me")
    sample = read_inkml(tmp_path / "s.inkml")
    assert sample.truth == "x ^ { 2 } = y <" and sample.writer == "me"
    assert len(sample.traces) == len(strokes)
    for a, b in zip(sample.traces, strokes):
        np.testing.assert_allclose(a, b, rtol=1e-5)
