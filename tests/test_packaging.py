"""packaging/compile_decoder.py: what the packaged app's build bundles as its compiled decoder
(the compiles themselves run in the build, a few minutes; here they are stood in for)."""

from __future__ import annotations

import importlib.util
import platform
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.fixture
def compile_decoder(monkeypatch):
    spec = importlib.util.spec_from_file_location("compile_decoder", REPO / "packaging" / "compile_decoder.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    made = []

    def compile_package(decoder, path, conv_dtype, portable=False):
        assert portable, "a packaged app's packages are compiled for any x86-64-v3 CPU"
        Path(path).write_bytes(b"a package")
        made.append(Path(path).name)

    monkeypatch.setattr(module, "compile_step", compile_package)
    monkeypatch.setattr(module, "compile_forward", compile_package)
    monkeypatch.setattr(module, "avx512_instructions", lambda path: 0)
    monkeypatch.setattr(platform, "system", lambda: "Linux")
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    module.made = made
    return module


def test_packages_kept_from_a_build_of_other_code_are_not_bundled(compile_decoder, tmp_path):
    # the portable key leaves the code out (a packaged app has none to read)
    from model.compiled_step import package_key
    from model.recognizer import Recognizer

    stale = tmp_path / "step-made-by-other-code.pt2"
    stale.write_bytes(b"an old package")
    assert compile_decoder.main([str(tmp_path)]) == 0
    assert len(compile_decoder.made) == 4 and not stale.exists()  # step and pass, conv in fp32 and bf16
    decoder = Recognizer.load(None, device="cpu").model.decoder
    decoder.arm.conv_dtype = None
    assert f"step-{package_key(decoder, portable=True)}.pt2" in compile_decoder.made
    compile_decoder.made.clear()
    assert compile_decoder.main([str(tmp_path)]) == 0 and compile_decoder.made == []  # the same code: kept
    (tmp_path / "source.sha256").write_text("the digest of other code\n")
    assert compile_decoder.main([str(tmp_path)]) == 0 and len(compile_decoder.made) == 4


def test_a_package_with_avx512_instructions_is_refused(compile_decoder, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(compile_decoder, "avx512_instructions", lambda path: 12)
    assert compile_decoder.main([str(tmp_path)]) == 1
    assert "AVX-512 instructions" in capsys.readouterr().err and not list(tmp_path.glob("*.pt2"))


@pytest.mark.parametrize(
    ("line", "avx512"),
    [("vmovups %zmm0,(%rax)", True), ("kmovw %k1,%eax", True), ("vaddps %ymm17,%ymm2,%ymm3", True),
     ("vaddps %ymm1,%ymm2,%ymm15", False), ("vmovaps %xmm15,%xmm1", False), ("call 1f0 <k1>", False)],
)  # fmt: skip
def test_avx512_registers_are_told_from_avx2_ones(compile_decoder, line, avx512):
    assert bool(compile_decoder.AVX512_REGISTERS.search(line)) == avx512
