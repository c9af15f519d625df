"""The ahead-of-time compiled decoder step reads exactly as the eager one, follows the
weights, and never costs a recognition when it cannot be used."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from model.compiled_step import CompiledStep, package_key
from model.package_library import LibraryUnavailable, PackageLibrary
from model.recognizer import Recognizer
from tests.conftest import SYNTHETIC_EXPRESSIONS
from tests.synthetic_ink import ink_for

pytestmark = pytest.mark.skipif(
    not hasattr(torch._inductor, "aoti_compile_and_package") or not (shutil.which("c++") or shutil.which("g++")),
    reason="needs torch >= 2.6 and a C++ compiler to compile ahead of time",
)


@dataclass
class BackgroundCompile:
    folder: Path
    message: str  # what use_compiled_step said when asked to compile in the background
    readings: int  # recognitions made while the packages were being compiled
    expected: list  # eager readings of the inks below in the exact search, by a recognizer never compiled
    got: list  # the same inks read in the exact search while the compile ran beside them
    switched: bool  # both compiled packages were in use once the compile ended
    expected_app: list  # eager readings of the inks as the app searches (on a bf16 CPU, with bf16)
    after: list  # the same inks read by the compiled code, as the app searches
    exported_here: int  # calls to the exporter or compiler in this process during the compile


@pytest.fixture(scope="module")
def background_compile(tmp_path_factory, tiny_checkpoint) -> BackgroundCompile:
    """Compile the packages once for the module, as the app does on its first start: in the
    background, while a person goes on drawing (the packages take about a minute)."""
    import time

    folder = tmp_path_factory.mktemp("compiled")
    eager = Recognizer.load(tiny_checkpoint, device="cpu")
    rec = Recognizer.load(tiny_checkpoint, device="cpu")
    exported_here = []

    def not_in_this_process(*args, **kwargs):
        exported_here.append(1)
        raise RuntimeError("the packages are being compiled in the app's own process")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.export, "export", not_in_this_process)
        patch.setattr(torch._inductor, "aoti_compile_and_package", not_in_this_process)
        message = rec.use_compiled_step(folder, compile_if_missing="background")
        # The person turns the exact search on while the packages compile: on a bf16 CPU that
        # switches the live ARM to fp32, and the packages must still be what they were keyed as.
        rec.exact_search = eager.exact_search = True
        inks = [ink_for(latex) for latex in SYNTHETIC_EXPRESSIONS[:3]]
        expected = [eager.recognize(strokes, 3) for strokes in inks]
        deadline, got = time.monotonic() + 300, []
        while rec.model.decoder.compiled_step is None and time.monotonic() < deadline:
            got.append(rec.recognize(inks[len(got) % 3], 3))
    switched = rec.model.decoder.compiled_step is not None and rec.model.decoder.compiled_forward is not None
    rec.exact_search = eager.exact_search = False
    expected_app = [eager.recognize(strokes, 3) for strokes in inks]
    after = [rec.recognize(strokes, 3) for strokes in inks]
    return BackgroundCompile(folder, message, len(got), expected, got, switched, expected_app, after, len(exported_here))


@pytest.fixture(scope="module")
def compiled_dir(background_compile) -> Path:
    return background_compile.folder


def _pair(tiny_checkpoint, compiled_dir) -> tuple[Recognizer, Recognizer]:
    eager = Recognizer.load(tiny_checkpoint, device="cpu")
    fast = Recognizer.load(tiny_checkpoint, device="cpu")
    assert fast.use_compiled_step(compiled_dir).startswith("using")  # the package is found, not rebuilt
    return eager, fast


def _same(a, b) -> None:
    assert a.tokens == b.tokens
    assert [x.latex for x in a.alternatives] == [x.latex for x in b.alternatives]
    np.testing.assert_allclose([x.score for x in a.alternatives], [x.score for x in b.alternatives], atol=1e-4)
    np.testing.assert_allclose(a.attention, b.attention, atol=1e-4)
    np.testing.assert_allclose(a.token_probs, b.token_probs, atol=1e-4)
    assert a.structure == b.structure


def test_the_compiled_step_reads_as_the_eager_one(tiny_checkpoint, compiled_dir):
    eager, fast = _pair(tiny_checkpoint, compiled_dir)
    calls = {"step": 0, "forward": 0}
    for name, package in (("step", fast.model.decoder.compiled_step), ("forward", fast.model.decoder.compiled_forward)):
        original = getattr(package, name)
        setattr(package, name, lambda *a, _f=original, _n=name, **k: calls.__setitem__(_n, calls[_n] + 1) or _f(*a, **k))
    for latex in SYNTHETIC_EXPRESSIONS[:4]:
        strokes = ink_for(latex)
        for beam in (1, 5):  # the greedy preview (one row) and the beam search
            _same(eager.recognize(strokes, beam), fast.recognize(strokes, beam))
    # the compiled code ran: the steps, and the rescoring of each beam search
    assert calls["step"] > 20 and calls["forward"] >= 4
    # and the teacher-forced pass gives the eager one's outputs, attention maps included
    # (the rescoring's explain a reading only the right-to-left search found)
    with torch.inference_mode():
        memory, mask = eager.model.encode(torch.rand(1, 1, 48, 120), torch.zeros(1, 48, 120, dtype=torch.bool))
        tokens = torch.randint(4, len(eager.vocab), (3, 7))
        image = torch.zeros(3, dtype=torch.long)
        want = eager.model.decoder(memory, mask, tokens, need_attention=True, image_index=image)
        got = fast.model.decoder(memory, mask, tokens, need_attention=True, image_index=image)
    assert calls["forward"] >= 5
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)


def test_the_compiled_pass_reads_a_sliced_batch_as_the_eager_one(tiny_checkpoint, compiled_dir):
    # The package reads its inputs with the strides it was compiled for, unchecked: a slice
    # (here rows cut short, as a caller trimming padding would pass) must reach it contiguous.
    eager, fast = _pair(tiny_checkpoint, compiled_dir)
    with torch.inference_mode():
        memory, mask = eager.model.encode(torch.rand(1, 1, 48, 120), torch.zeros(1, 48, 120, dtype=torch.bool))
        tokens = torch.randint(4, len(eager.vocab), (7, 9))
        tokens[2, 4:] = 0  # a shorter row, padded
        sliced = tokens[1:3, :6]
        assert not sliced.is_contiguous()
        image = torch.zeros(2, dtype=torch.long)
        calls = []
        package = fast.model.decoder.compiled_forward._package
        fast.model.decoder.compiled_forward._package = lambda *a: calls.append(1) or package(*a)
        got = fast.model.decoder(memory, mask, sliced, need_attention=True, image_index=image)
        want = eager.model.decoder(memory, mask, sliced, need_attention=True, image_index=image)
    assert calls == [1]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)


def test_opening_the_packages_leaves_the_compiler_unimported(tiny_checkpoint, compiled_dir):
    # torch's Python wrapper for packages imports the whole compiler: about a second more at
    # every start of the app and 150 MB more memory (model card, session 32)
    import subprocess

    script = (
        "import sys; from model.recognizer import Recognizer; "
        f"rec = Recognizer.load({str(tiny_checkpoint)!r}, device='cpu'); "
        f"print(rec.use_compiled_step({str(compiled_dir)!r})); print('torch._inductor' in sys.modules)"
    )
    root = Path(__file__).resolve().parent.parent
    run = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, check=True)
    message, imported = run.stdout.strip().splitlines()[-2:]
    assert message.startswith("using") and imported == "False"


def test_a_torch_whose_loader_differs_opens_the_packages_through_its_wrapper(
    tiny_checkpoint, compiled_dir, monkeypatch
):
    from model import compiled_step

    monkeypatch.setattr(compiled_step, "_LOADER_ARGS", ("model",))  # arguments this loader refuses
    monkeypatch.setattr(compiled_step, "PackageLibrary", _unavailable)  # and no C interface to call
    with pytest.raises(TypeError):
        torch._C._aoti.AOTIModelPackageLoader(str(next(compiled_dir.glob("step-*.pt2"))), "model")
    eager, fast = _pair(tiny_checkpoint, compiled_dir)
    strokes = ink_for(SYNTHETIC_EXPRESSIONS[1])
    _same(eager.recognize(strokes, 5), fast.recognize(strokes, 5))
    assert fast.model.decoder.compiled_step is not None and fast.model.decoder.compiled_forward is not None


def _unavailable(path):
    raise LibraryUnavailable("simulated: an older torch")


def test_the_packages_are_called_without_the_interpreter_where_torch_allows(tiny_checkpoint, compiled_dir):
    # torch's loader holds Python's interpreter for a whole call; so, while the app read a long
    # expression, its GUI thread stalled for up to 37 ms (session 32). Another thread must run
    # while a package computes. With a switch interval longer than the test, the interpreter
    # changes threads only where one lets go of it, so a call that held it would show as one
    # gap between a ticking thread's ticks as long as the call.
    import itertools
    import threading
    import time

    _, fast = _pair(tiny_checkpoint, compiled_dir)
    forced = fast.model.decoder.compiled_forward
    assert isinstance(forced._package, PackageLibrary)
    d = fast.model.decoder.norm.normalized_shape[0]
    inputs = (torch.randn(1, 16, 64, d), torch.zeros(1, 16, 64, dtype=torch.bool),
              torch.randint(4, len(fast.vocab), (32, 40)), forced._scalars)  # fmt: skip
    ticks, calls, done = [], [], threading.Event()

    def tick() -> None:
        while not done.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.0005)  # lets go of the interpreter, as the GUI thread's event loop does

    interval = sys.getswitchinterval()
    sys.setswitchinterval(60.0)
    ticker = threading.Thread(target=tick)
    try:
        ticker.start()
        time.sleep(0.01)
        for _ in range(4):
            start = time.perf_counter()
            forced._package(*inputs)
            calls.append(time.perf_counter() - start)
    finally:
        done.set()
        ticker.join()
        sys.setswitchinterval(interval)
    longest_gap = max(b - a for a, b in itertools.pairwise(ticks))
    assert min(calls) > 0.02  # long enough to tell a held interpreter from the scheduler's noise
    assert longest_gap < 0.25 * min(calls), f"ticks stopped for {longest_gap * 1000:.0f} ms of a {min(calls) * 1000:.0f} ms call"


def test_without_the_c_interface_the_packages_open_through_the_loader(tiny_checkpoint, compiled_dir, monkeypatch):
    from model import compiled_step, package_library

    # a model library older than the interface used (a function it lacks)
    monkeypatch.setitem(package_library._SIGNATURES, "AOTInductorModelContainerNotInThisTorch", [])
    with pytest.raises(LibraryUnavailable, match="lacks AOTInductorModelContainerNotInThisTorch"):
        PackageLibrary(next(compiled_dir.glob("step-*.pt2")))
    eager, fast = _pair(tiny_checkpoint, compiled_dir)
    assert isinstance(fast.model.decoder.compiled_step._package, compiled_step._Runner)
    strokes = ink_for(SYNTHETIC_EXPRESSIONS[1])
    _same(eager.recognize(strokes, 5), fast.recognize(strokes, 5))


def test_the_model_library_is_loaded_without_leaving_files(compiled_dir, tmp_path, monkeypatch):
    import tempfile

    package = tmp_path / "step.pt2"
    package.write_bytes(next(compiled_dir.glob("step-*.pt2")).read_bytes())
    PackageLibrary(package)
    assert [p.name for p in tmp_path.iterdir()] == ["step.pt2"]  # extracted beside it, loaded, removed
    # a packages' folder that refuses files (full, read-only): the temporary folder serves
    make_file = tempfile.mkstemp

    def refuse_beside_the_package(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == tmp_path:
            raise OSError(28, "No space left on device")
        return make_file(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", refuse_beside_the_package)
    library = PackageLibrary(package)
    assert len(library.get_constant_fqns()) > 10


def test_the_model_library_refuses_weights_it_does_not_have(compiled_dir):
    library = PackageLibrary(next(compiled_dir.glob("step-*.pt2")))
    with pytest.raises(KeyError, match="no weights named"):
        library.load_constants({"body.dec.not_a_weight": torch.zeros(3)})


def test_the_compiled_step_follows_weights_changed_in_place(tiny_checkpoint, compiled_dir):
    eager, fast = _pair(tiny_checkpoint, compiled_dir)
    strokes = ink_for(SYNTHETIC_EXPRESSIONS[1])
    before = fast.recognize(strokes, 5)
    with torch.no_grad():  # as a fine-tune in place would
        for model in (eager.model, fast.model):
            torch.manual_seed(0)
            for p in model.decoder.parameters():
                p.mul_(1 + 0.05 * torch.randn_like(p))
    after = fast.recognize(strokes, 5)
    assert after.alternatives[0].score != pytest.approx(before.alternatives[0].score)
    _same(eager.recognize(strokes, 5), after)


def test_a_broken_package_is_replaced_and_recognition_runs_meanwhile(tiny_checkpoint, compiled_dir, tmp_path):
    rec = Recognizer.load(tiny_checkpoint, device="cpu")
    package = tmp_path / f"step-{package_key(rec.model.decoder)}.pt2"
    package.write_bytes(b"not a package")
    message = rec.use_compiled_step(tmp_path)  # compile_if_missing="no"
    assert message.startswith("not compiled") and rec.model.decoder.compiled_step is None
    assert not package.exists()  # the next start compiles a good one
    assert rec.recognize(ink_for(SYNTHETIC_EXPRESSIONS[0]), 3).tokens == SYNTHETIC_EXPRESSIONS[0].split()


def test_what_an_interrupted_compile_left_is_removed_but_not_a_compile_under_way(tiny_checkpoint, tmp_path):
    import os
    import time

    old, fresh = tmp_path / "partial-abc.pt2", tmp_path / "partial-def.pt2"
    old_decoder = tmp_path / "partial-abc.pt2.decoder"  # the decoder copy the compiling process reads
    old_library, fresh_library = tmp_path / "extracted-abc.so", tmp_path / "extracted-def.so"
    for partial in (old, fresh, old_decoder, old_library, fresh_library):
        partial.write_bytes(b"half a package")
    for partial in (old, old_decoder, old_library):
        os.utime(partial, (time.time() - 7200, time.time() - 7200))
    Recognizer.load(tiny_checkpoint, device="cpu").use_compiled_step(tmp_path)
    assert not old.exists() and not old_decoder.exists() and fresh.exists()
    assert not old_library.exists() and fresh_library.exists()


def test_packages_unused_for_a_month_are_removed_but_not_those_in_use(tiny_checkpoint, compiled_dir, tmp_path):
    # each update of hmer or torch compiles a new pair (22 MB); the old stayed for good
    import os
    import time

    rec = Recognizer.load(tiny_checkpoint, device="cpu")
    current = tmp_path / f"step-{package_key(rec.model.decoder)}.pt2"
    shutil.copy(compiled_dir / current.name, current)
    old = [tmp_path / "step-0123456789abcdef.pt2", tmp_path / "forced-0123456789abcdef.pt2"]
    recent = tmp_path / "forced-fedcba9876543210.pt2"  # another installation's, used last week
    for package in (*old, recent):
        package.write_bytes(b"a package")
    for package, days in ((old[0], 40), (old[1], 40), (current, 40), (recent, 7)):
        when = time.time() - days * 24 * 3600
        os.utime(package, (when, when))
    message = rec.use_compiled_step(tmp_path)  # compile_if_missing="no"
    assert message.startswith("using the compiled decoder step"), message
    assert not old[0].exists() and not old[1].exists() and recent.exists()
    assert time.time() - current.stat().st_mtime < 600  # loaded now: its last use is now


def test_a_cache_folder_that_cannot_be_written_leaves_the_eager_step(tiny_checkpoint, tmp_path):
    rec = Recognizer.load(tiny_checkpoint, device="cpu")
    blocker = tmp_path / "a file where the folder should be"
    blocker.write_text("")
    message = rec.use_compiled_step(blocker / "compiled", compile_if_missing="now")
    assert message.startswith("not compiled: cannot write") and rec.model.decoder.compiled_step is None
    assert rec.recognize(ink_for(SYNTHETIC_EXPRESSIONS[0]), 3).tokens == SYNTHETIC_EXPRESSIONS[0].split()


def test_where_no_process_can_compile_recognition_runs_eagerly(tiny_checkpoint, tmp_path, monkeypatch):
    import multiprocessing.context

    def refuse(self):
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(multiprocessing.context.SpawnProcess, "start", refuse)
    rec = Recognizer.load(tiny_checkpoint, device="cpu")
    message = rec.use_compiled_step(tmp_path, compile_if_missing="now")
    assert "no process to compile in: OSError" in message and rec.model.decoder.compiled_step is None
    assert not list(tmp_path.iterdir())  # no partial package left
    assert rec.recognize(ink_for(SYNTHETIC_EXPRESSIONS[0]), 3).tokens == SYNTHETIC_EXPRESSIONS[0].split()


def test_a_quitting_app_starts_no_compile(tiny_checkpoint, tmp_path, monkeypatch):
    # at exit, the background thread went on to the next package and started a process while
    # the interpreter shut down ("terminate called without an active exception")
    import threading

    from model import compiled_step

    quitting = threading.Event()
    quitting.set()
    monkeypatch.setattr(compiled_step, "_exiting", quitting)
    rec = Recognizer.load(tiny_checkpoint, device="cpu")
    message = rec.use_compiled_step(tmp_path, compile_if_missing="now")
    assert message == "not compiled: the app is quitting"  # and the second package was not tried
    assert not list(tmp_path.iterdir())


def test_a_compiling_process_that_dies_leaves_the_eager_step(tiny_checkpoint, tmp_path, monkeypatch):
    # killed (out of memory, by the user) before it could say why: the child here ends at
    # once with an error, having sent nothing
    from model import compiled_step

    monkeypatch.setattr(compiled_step, "_compile_child", sys.exit)  # pickled by name: the child runs it
    rec = Recognizer.load(tiny_checkpoint, device="cpu")
    message = rec.use_compiled_step(tmp_path, compile_if_missing="now")
    assert "the compiling process ended without a result (exit code 1)" in message
    assert rec.model.decoder.compiled_step is None and not list(tmp_path.iterdir())
    assert rec.recognize(ink_for(SYNTHETIC_EXPRESSIONS[0]), 3).tokens == SYNTHETIC_EXPRESSIONS[0].split()


def test_a_failing_compiled_step_falls_back_to_eager_for_good(tiny_checkpoint, compiled_dir):
    eager, fast = _pair(tiny_checkpoint, compiled_dir)

    def broken(*args):
        raise RuntimeError("simulated failure inside the compiled code")

    assert fast.decoder_status.startswith("using the compiled decoder")
    fast.model.decoder.compiled_step._package = broken
    fast.model.decoder.compiled_forward._package = broken
    strokes = ink_for(SYNTHETIC_EXPRESSIONS[2])
    _same(eager.recognize(strokes, 5), fast.recognize(strokes, 5))
    assert fast.model.decoder.compiled_step is None and fast.model.decoder.compiled_forward is None
    assert fast.decoder_status.startswith("eager: the compiled decoder failed")  # the status bar says so


def test_steps_the_package_was_not_compiled_for_run_eagerly(tiny_checkpoint, compiled_dir):
    _, fast = _pair(tiny_checkpoint, compiled_dir)
    decoder = fast.model.decoder
    step: CompiledStep = decoder.compiled_step
    memory = torch.randn(2, 3, 5, decoder.norm.normalized_shape[0])
    mask = torch.zeros(2, 3, 5, dtype=torch.bool)
    image_index = torch.tensor([0, 0, 1, 1])
    assert not step.fits(decoder.start(memory, mask, image_index), 4)  # two images: evaluation batches
    forced = decoder.compiled_forward
    tokens = torch.ones(4, 6, dtype=torch.long)
    assert not forced.fits(memory, mask, tokens, image_index)
    assert forced.fits(memory[:1], mask[:1], tokens, image_index * 0)
    assert not forced.fits(memory[:1], mask[:1], tokens[:, :1], image_index * 0)  # shorter than compiled for
    mask[1, :, 4:] = True
    assert not step.fits(decoder.start(memory[:1], mask[1:], image_index[:2] * 0), 2)  # padding
    assert step.fits(decoder.start(memory[:1], mask[:1], image_index[:2] * 0), 2)


def test_a_package_runs_only_with_the_arm_convolution_it_was_compiled_for(tiny_checkpoint, compiled_dir):
    # The app computes the ARM's convolution in bf16 where the CPU can, but the exact search
    # in fp32 (the reference's): a package compiled for one is keyed apart from the other,
    # and the other runs eagerly, with the eager code's reading.
    from model.compiled_step import package_key

    eager, fast = _pair(tiny_checkpoint, compiled_dir)
    decoder, arm = fast.model.decoder, fast.model.decoder.arm
    compiled_for = arm.conv_dtype
    key = package_key(decoder)
    arm.conv_dtype = None if compiled_for is not None else torch.bfloat16
    assert package_key(decoder) != key
    arm.conv_dtype = compiled_for
    calls = []
    for package in (decoder.compiled_step, decoder.compiled_forward):
        run = package._run
        package._run = lambda *a, _run=run: calls.append(1) or _run(*a)
    strokes = ink_for(SYNTHETIC_EXPRESSIONS[1])
    for rec in (eager, fast):
        rec.exact_search = True  # fp32 throughout
    _same(eager.recognize(strokes, 5), fast.recognize(strokes, 5))
    assert not calls if compiled_for is not None else calls  # compiled for bf16: eager in the exact search
    for rec in (eager, fast):
        rec.exact_search = False
    _same(eager.recognize(strokes, 5), fast.recognize(strokes, 5))
    assert calls


def test_the_app_compiles_in_the_background_while_it_keeps_recognizing(background_compile):
    done = background_compile
    assert done.message.startswith("preparing"), done.message
    # as a person drawing on the app's first start: the export and compile beside it change nothing
    assert done.readings > 0
    # in a process of its own: in the app's, the exporter's and compiler's Python held the
    # interpreter, stalling the GUI thread for up to 613 ms and recognitions for up to 31 s
    assert done.exported_here == 0
    for i, reading in enumerate(done.got):
        _same(done.expected[i % 3], reading)
    assert done.switched, "the compiled packages were not in use after the compile"
    assert list(done.folder.glob("step-*.pt2")) and list(done.folder.glob("forced-*.pt2"))  # kept for the next start
    for want, reading in zip(done.expected_app, done.after):  # compiled as keyed, not as switched meanwhile
        _same(want, reading)


def test_a_package_made_by_other_code_is_not_reused(tiny_checkpoint, monkeypatch):
    from model import compiled_step

    decoder = Recognizer.load(tiny_checkpoint, device="cpu").model.decoder
    key = package_key(decoder)
    assert package_key(decoder) == key  # the same code and shapes: the package is found again
    monkeypatch.setattr(compiled_step, "_traced_source", lambda: "the decoder of another hmer version")
    assert package_key(decoder) != key


def test_without_the_decoder_source_nothing_is_compiled_or_loaded(tiny_checkpoint, tmp_path, monkeypatch):
    import inspect

    rec = Recognizer.load(tiny_checkpoint, device="cpu")

    def no_source(module):
        raise OSError("could not get source code")  # as in a packaged app

    monkeypatch.setattr(inspect, "getsource", no_source)
    message = rec.use_compiled_step(tmp_path, compile_if_missing="now")
    assert message.startswith("not compiled: the decoder's source cannot be read")
    assert rec.model.decoder.compiled_step is None and not list(tmp_path.iterdir())


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="looks for the process in /proc")
def test_a_compiling_process_ends_when_the_app_is_killed():
    # an app that quits normally ends its daemonic children; a killed or crashed one does
    # not, and its compile would hold a core for minutes
    import os
    import subprocess
    import time

    app = (
        "import multiprocessing, os\n"
        "from model.compiled_step import _end_with\n"
        "if __name__ == '__main__':\n"
        "    child = multiprocessing.get_context('spawn').Process(target=_end_with, args=(os.getpid(),))\n"
        "    child.start()\n"
        "    print(child.pid, flush=True)\n"
        "    os.kill(os.getpid(), 9)\n"
    )
    root = Path(__file__).resolve().parent.parent
    with subprocess.Popen([sys.executable, "-c", app], cwd=root, stdout=subprocess.PIPE, text=True) as killed:
        child = int(killed.stdout.readline())
        killed.wait(timeout=60)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{child}").exists():
        time.sleep(0.1)
    alive = Path(f"/proc/{child}").exists()
    if alive:
        os.kill(child, 9)
    assert not alive, f"process {child} outlived the app that started it"


def test_a_packaged_app_loads_the_packages_bundled_with_it(tiny_checkpoint, compiled_dir, tmp_path, monkeypatch):
    # A packaged app has no compiler and no source to key packages by: it loads the packages
    # built for any x86-64-v3 CPU with it (packaging/compile_decoder.py), keyed without source.
    import inspect

    from model import compiled_step

    eager = Recognizer.load(tiny_checkpoint, device="cpu")
    rec = Recognizer.load(tiny_checkpoint, device="cpu")
    key = package_key(rec.model.decoder, portable=True)
    assert key != package_key(rec.model.decoder)
    with monkeypatch.context() as laptop:  # built on this machine, run on an AVX2 laptop's
        laptop.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
        assert package_key(rec.model.decoder, portable=True) == key
    for name in ("step", "forced"):  # the module's packages stand in: the same code and shapes
        shutil.copy(next(compiled_dir.glob(f"{name}-*.pt2")), tmp_path / f"{name}-{key}.pt2")
    bundled = sorted(p.name for p in tmp_path.iterdir())

    def no_source(module):
        raise OSError("could not get source code")

    def never(*args, **kwargs):
        raise AssertionError("a packaged app compiled")

    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(inspect, "getsource", no_source)
    monkeypatch.setattr(compiled_step, "_compile", never)
    message = rec.use_compiled_step(tmp_path, compile_if_missing="background")
    assert message.startswith("using the compiled decoder step and teacher-forced pass"), message  # at once
    assert rec.decoder_status == message
    strokes = ink_for(SYNTHETIC_EXPRESSIONS[1])
    _same(eager.recognize(strokes, 5), rec.recognize(strokes, 5))

    # a CPU below the level they were compiled for runs eagerly, and says why
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    old_cpu = Recognizer.load(tiny_checkpoint, device="cpu")
    message = old_cpu.use_compiled_step(tmp_path, compile_if_missing="background")
    assert message == "not compiled: the packages bundled with this app need an x86-64-v3 (AVX2) CPU"
    assert old_cpu.model.decoder.compiled_step is None and old_cpu.decoder_status == message
    monkeypatch.undo()

    # a broken bundled package: the other is used, and the app's files are left as they are
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    (tmp_path / f"step-{key}.pt2").write_bytes(b"not a package")
    broken = Recognizer.load(tiny_checkpoint, device="cpu")
    message = broken.use_compiled_step(tmp_path, compile_if_missing="background")
    assert message.startswith("using the compiled decoder teacher-forced pass"), message
    assert broken.model.decoder.compiled_step is None
    assert sorted(p.name for p in tmp_path.iterdir()) == bundled
