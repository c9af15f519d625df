"""Compile the bundled model's decoder for any x86-64-v3 (AVX2) CPU, for the packaged app,
which cannot compile (no compiler, no source): packaging/build.sh bundles what this writes.

    python packaging/compile_decoder.py OUT

Writes both packages (the search's step and the teacher-forced pass) twice, for the ARM's
convolution in fp32 and in bf16 (the app computes it in bf16 where the CPU does so natively),
named by `package_key(decoder, portable=True)`, which the packaged app looks for. Each
library is checked for AVX-512 instructions (with objdump), which an AVX2 laptop lacks.
"""

from __future__ import annotations

import argparse
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

from model.compiled_step import CompileUnavailable, code_digest, compile_forward, compile_step, package_key
from model.recognizer import Recognizer

# registers only AVX-512 has: zmm, the mask registers, and the upper 16 of xmm and ymm
AVX512_REGISTERS = re.compile(r"%(zmm\d+|k[0-7]|[xy]mm(1[6-9]|2\d|3[01]))\b")


def avx512_instructions(package: Path) -> int | None:
    """How many instructions of the package's model library use AVX-512's registers (None:
    objdump is not installed)."""
    objdump = shutil.which("objdump")
    if objdump is None:
        return None
    with zipfile.ZipFile(package) as archive, tempfile.TemporaryDirectory() as folder:
        libraries = [name for name in archive.namelist() if name.endswith(".so")]
        count = 0
        for name in libraries:
            library = archive.extract(name, folder)
            listing = subprocess.run([objdump, "-d", "--no-show-raw-insn", library],
                                     capture_output=True, text=True, check=True).stdout  # fmt: skip
            count += sum(bool(AVX512_REGISTERS.search(line.split("#")[0])) for line in listing.splitlines())
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to write the packages into")
    args = parser.parse_args(argv)
    if (platform.system(), platform.machine().lower()) != ("Linux", "x86_64"):  # the one tried
        print(f"not built on {platform.system()} {platform.machine()}: the packaged app will run its decoder eagerly")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    decoder = Recognizer.load(None, device="cpu").model.decoder  # the bundled checkpoint
    # The portable key leaves the code out (a packaged app has none to read), so packages
    # kept from a build of other code must not be bundled: they are kept only for the same code.
    stamp = args.out / "source.sha256"
    source = code_digest()
    if not stamp.exists() or stamp.read_text().strip() != source:
        for old in args.out.glob("*.pt2"):
            old.unlink()
        stamp.write_text(source + "\n")
    for conv_dtype in (None, torch.bfloat16):
        decoder.arm.conv_dtype = conv_dtype  # part of the key
        key = package_key(decoder, portable=True)
        for name, compile_package in (("step", compile_step), ("forced", compile_forward)):
            path = args.out / f"{name}-{key}.pt2"
            if not path.exists():
                try:
                    compile_package(decoder, path, conv_dtype, portable=True)
                except CompileUnavailable as e:
                    print(f"compile_decoder: {e}", file=sys.stderr)
                    return 1
            wide = avx512_instructions(path)
            if wide:
                print(f"compile_decoder: {path.name} has {wide} AVX-512 instructions", file=sys.stderr)
                path.unlink()
                return 1
            checked = "no AVX-512 instructions" if wide == 0 else "not checked for AVX-512 (no objdump)"
            print(f"{path} (ARM convolution in {conv_dtype or torch.float32}; {checked})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
