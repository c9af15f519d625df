"""The decoder compiled ahead of time (torch.export + AOTInductor).

A search step runs about 800 small tensor operations, so in eager PyTorch its
time on a CPU is mostly per-operator cost, not arithmetic (the model card's
"How far from the arithmetic"). Two graphs are exported once with symbolic
sizes and compiled to native code: the search's step (1.7-2.4x as fast alone)
and the teacher-forced pass on one image that rescores hypotheses and draws
the attention maps (1.4-2.0x on a typical expression's sizes). Recognition
takes 0.7-0.8x the time, and, unlike `torch.compile`, nothing recompiles for
a new prefix length.

The packages hold no weights of their own that matter: `CompiledStep` and
`CompiledForward` load the decoder's current weights into them
(`load_constants`), and again whenever they change in place (a fine-tune). So
one pair of packages per network shape, torch version and machine serves every
checkpoint of that shape. Compiling takes about two minutes on a 2-core CPU, in a
process of its own, and needs a C++ compiler; a packaged app loads packages
compiled with it for any x86-64-v3 CPU (packaging/compile_decoder.py). Where it
fails, or an input falls outside what a package was compiled for, the decoder
runs eagerly, with the same results up to float rounding.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import hashlib
import logging
import os
import platform
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.package_library import EXTRACTED_PREFIX, LibraryUnavailable, PackageLibrary

if TYPE_CHECKING:
    from model.decoder import Decoder, DecoderState

log = logging.getLogger(__name__)

# What the package is compiled for. The rasterizer's largest image (256 x 1024 px,
# downsampled 16x) gives a 16 x 64 grid; 64 rows cover beam 32 in both directions.
MAX_ROWS = 64
MAX_CACHE = 256  # self-attention cache slots (the app's length bound is at most 200)
MAX_GRID = (16, 64)
PARTIAL_PREFIX = "partial-"  # a package being written; renamed into place when whole
# Packages bundled with a packaged app (which cannot compile) are compiled for this x86
# level (AVX2, FMA, F16C, BMI: Intel since 2013, AMD since 2015), not for the building
# machine, and load where torch reports one of these CPU capabilities.
PORTABLE_MARCH = "x86-64-v3"
PORTABLE_CAPABILITIES = frozenset({"AVX2", "AVX512"})


def enabled() -> bool:
    """False where the user turned the compiled step off: HMER_COMPILED_STEP=0."""
    return os.environ.get("HMER_COMPILED_STEP", "1").strip() != "0"


class CompileUnavailable(RuntimeError):
    """This torch cannot export and compile ahead of time, or the compiler failed."""


class CompileCancelled(CompileUnavailable):
    """The app is quitting: the compile under way is abandoned, and no other is started."""


# Set at the interpreter's exit, before multiprocessing ends the compiling child (exit
# handlers run last registered first): the background thread, left waiting on that child,
# must then start nothing more. It went on to the next package and started a process while
# the interpreter shut down ("terminate called without an active exception").
_exiting = threading.Event()
atexit.register(_exiting.set)


def _scalar_names(decoder: Decoder) -> list[str]:
    """The decoder's one-element float weights (CBAM's spatial BatchNorm). Inductor writes
    such constants into the generated code as numbers, where new weights would never reach
    them, so the package takes them as an input instead."""
    named = list(decoder.named_parameters()) + list(decoder.named_buffers())
    return [name for name, t in named if t.numel() == 1 and t.is_floating_point()]


def _scalars(decoder: Decoder, names: list[str]) -> Tensor:
    values = dict(decoder.named_parameters()) | dict(decoder.named_buffers())
    return torch.cat([values[name].detach().reshape(1).float() for name in names]) if names else torch.zeros(0)


class _StepGraph(nn.Module):
    """`_StepBody` with the decoder's one-element weights taken from the input `scalars`."""

    def __init__(self, decoder: Decoder) -> None:
        super().__init__()
        self.body = _StepBody(decoder)
        self.names = _scalar_names(decoder)

    def forward(
        self, tokens: Tensor, position: Tensor, self_kv: Tensor, coverage: Tensor, coverage_rows: Tensor,
        cross_k: Tensor, cross_v: Tensor, scalars: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
        overrides = {f"dec.{name}": scalars[i : i + 1] for i, name in enumerate(self.names)}
        args = (tokens, position, self_kv, coverage, coverage_rows, cross_k, cross_v)
        return torch.func.functional_call(self.body, overrides, args)


class _StepBody(nn.Module):
    """`Decoder.step` as a pure function of tensors, for export.

    tokens [n]; position [1] (tokens consumed so far); self_kv [n, layers, 2, H, cap, dh]
    (slots < position filled); coverage [rows, 2, layers, H, h, w]; coverage_rows [n];
    cross_k [layers, H, dh, h, w]; cross_v [layers, H, h, w, dh].
    Returns main and auxiliary logits [n, V], this token's keys/values
    [n, layers, 2, H, dh], the new coverage [n, 2, layers, H, h, w] and the last
    layer's refined attention [n, H, h*w].
    """

    def __init__(self, decoder: Decoder) -> None:
        super().__init__()
        self.dec = decoder

    def forward(
        self, tokens: Tensor, position: Tensor, self_kv: Tensor, coverage: Tensor, coverage_rows: Tensor,
        cross_k: Tensor, cross_v: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
        dec = self.dec
        n, layers, _, heads, cap, dh = self_kv.shape
        h, w = coverage.shape[-2:]
        length = h * w
        x = dec.norm(dec.word_embed(tokens) + dec.pos_enc.pe.index_select(0, position))  # [n, d]
        cov = coverage.flatten(-2)  # [rows, 2, layers, H, L]
        arm_in = dec.arm.coverage_input(cov[:, 0, :-1], cov[:, 1, 1:], dim=2)  # [rows, layers-1, k*H, L]
        arm_in = arm_in.reshape(-1, arm_in.shape[2], h, w)
        penalties = dec.arm(arm_in, None).reshape(-1, layers - 1, heads, length).index_select(0, coverage_rows)
        hidden = (torch.arange(cap, device=tokens.device) >= position)[None, None, None]  # [1, 1, 1, cap] slots not yet filled
        keys = cross_k.flatten(-2)  # [layers, H, dh, L]
        values = cross_v.flatten(2, 3)  # [layers, H, L, dh]
        new_kv, refined, raws = [], [], []
        for i, layer in enumerate(dec.layers):
            sa = layer.self_attn
            qkv = F.linear(x, sa.in_proj_weight, sa.in_proj_bias).view(n, 3, heads, dh)  # [n, 3, H, dh]
            new_kv.append(qkv[:, 1:])
            # Self-attention over the cache and this token, written out with the softmax split
            # between the two: appending the token's key and value to the cache first copied the
            # whole cache every layer and step, and F.scaled_dot_product_attention costs about
            # 0.1 ms a call for one query row. A step: 0.84x the time at 20 rows, 50 tokens,
            # grid 8 x 39; 0.96x at 12 tokens, grid 5 x 22 (session 30).
            q = qkv[:, 0, :, None] * dh**-0.5  # [n, H, 1, dh]
            past = (q @ self_kv[:, i, 0].transpose(-1, -2)).masked_fill(hidden, float("-inf"))  # [n, H, 1, cap]
            own = (q[:, :, 0] * qkv[:, 1]).sum(dim=-1)[:, :, None, None]  # [n, H, 1, 1]
            top = torch.maximum(past.amax(dim=-1, keepdim=True), own)
            e_past, e_own = torch.exp(past - top), torch.exp(own - top)
            out = (e_past @ self_kv[:, i, 1] + e_own * qkv[:, 2, :, None]) / (e_past.sum(dim=-1, keepdim=True) + e_own)
            x = layer.norm1(x + sa.out_proj(out.reshape(n, -1)))  # out: [n, H, 1, dh]
            mha = layer.multihead_attn
            d = x.shape[-1]
            q = F.linear(x, mha.in_proj_weight[:d], mha.in_proj_bias[:d]).view(n, heads, dh) * dh**-0.5
            logits = (q.transpose(0, 1) @ keys[i]).transpose(0, 1)  # [n, H, L]
            raw = torch.softmax(logits, dim=-1)
            attn = raw if i == 0 else torch.softmax(logits - penalties[:, i - 1], dim=-1)
            refined.append(attn)
            raws.append(raw)
            ctx = (attn.transpose(0, 1) @ values[i]).transpose(0, 1)  # [n, H, dh]
            x = layer.norm2(x + mha.out_proj(ctx.reshape(n, -1)))
            x = layer.feed_forward(x)
        added = torch.stack(refined + raws, dim=1).view(n, 2, layers, heads, h, w)  # stacked in the coverage's order
        new_coverage = coverage.index_select(0, coverage_rows) + added
        return dec.head(x), dec.aux_head(x), torch.stack(new_kv, dim=1), new_coverage, attn


class _ForcedBody(nn.Module):
    """`Decoder.forward` in evaluation on one image, as a function of tensors, for export:
    memory [1, h, w, d], mem_mask [1, h, w], tokens [b, t] -> main and auxiliary logits
    [b, t, V] and the last layer's refined attention [b, H, t, h*w] (a transposed view). The
    rescoring by the opposite direction and the attention maps of a beam reading run it.

    The same arithmetic as `Decoder.forward`, with the cross-attention laid out [b, t, H, L]
    instead of [b, H, t, L]: the ARM reads each position's maps of all heads as one image,
    so in this layout its input is a view rather than a transposed copy, and its penalty
    needs no transposing back. A long rescoring pass takes 0.87x the time (session 30)."""

    def __init__(self, decoder: Decoder) -> None:
        super().__init__()
        self.dec = decoder

    def forward(self, memory: Tensor, mem_mask: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        dec = self.dec
        _, h, w, d = memory.shape
        b, t = tokens.shape
        heads = dec.nhead
        dh, length = d // heads, h * w
        mem = memory.reshape(length, d)
        padding = mem_mask.reshape(length)  # True: padding
        causal = torch.ones(t, t, dtype=torch.bool, device=tokens.device).triu_(1)
        self_mask = causal[None, None] | (tokens == 0)[:, None, None, :]  # [b, 1, t, t]
        grid_mask = padding.view(1, 1, h, w).expand(b * t, 1, h, w)
        x = dec.embed(tokens)  # [b, t, d]
        prev: Tensor | None = None  # the previous layer's refined attention [b, t, H, L]
        for layer in dec.layers:
            k, v = layer.self_attn.project_kv(x)
            x = layer.self_block(x, k, v, self_mask)
            mha = layer.multihead_attn
            q = F.linear(x, mha.in_proj_weight[:d], mha.in_proj_bias[:d]).view(b * t, heads, dh) * dh**-0.5
            kv = F.linear(mem, mha.in_proj_weight[d:], mha.in_proj_bias[d:])  # [L, 2d]
            key = kv[:, :d].view(length, heads, dh).permute(1, 2, 0)  # [H, dh, L]
            value = kv[:, d:].view(length, heads, dh).transpose(0, 1)  # [H, L, dh]
            logits = (q.transpose(0, 1) @ key).transpose(0, 1).reshape(b, t, heads, length)  # [b, t, H, L]
            logits = logits.masked_fill(padding, float("-inf"))
            attn = torch.softmax(logits, dim=-1)
            if prev is not None:  # coverage = attention summed over the earlier steps (cumsum minus self)
                prev_cov = prev.cumsum(dim=1) - prev
                curr_cov = attn.cumsum(dim=1) - attn
                cov = dec.arm.coverage_input(prev_cov, curr_cov, dim=2).reshape(b * t, -1, h, w)  # [(b t), k*H, h, w]
                penalty = dec.arm(cov, grid_mask).view(b, t, heads, length)
                attn = torch.softmax(logits - penalty, dim=-1)
            ctx = (attn.view(b * t, heads, length).transpose(0, 1) @ value).transpose(0, 1)  # [(b t), H, dh]
            x = layer.norm2(x + mha.out_proj(ctx.reshape(b, t, d)))
            x = layer.feed_forward(x)
            prev = attn
        return dec.head(x), dec.aux_head(x), attn.transpose(1, 2)  # [b, H, t, L]


class _ForcedGraph(nn.Module):
    """`_ForcedBody` with the decoder's one-element weights taken from the input `scalars`."""

    def __init__(self, decoder: Decoder) -> None:
        super().__init__()
        self.body = _ForcedBody(decoder)
        self.names = _scalar_names(decoder)

    def forward(self, memory: Tensor, mem_mask: Tensor, tokens: Tensor, scalars: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        overrides = {f"dec.{name}": scalars[i : i + 1] for i, name in enumerate(self.names)}
        return torch.func.functional_call(self.body, overrides, (memory, mem_mask, tokens))


def _traced_source() -> str:
    """The code the packages are traced from: a package compiled by another version of it
    (an older hmer) must not be loaded, even for the same shapes and torch."""
    import inspect

    from model import arm, decoder

    try:
        return "".join(inspect.getsource(module) for module in (arm, decoder, sys.modules[__name__]))
    except (OSError, TypeError) as e:  # no source files (a packaged app): nothing safe to key on
        raise CompileUnavailable(f"the decoder's source cannot be read to key its packages: {e}") from e


def code_digest() -> str:
    """A digest of the code the packages are traced from: what a build that bundles portable
    packages (keyed without it) checks before reusing packages it kept."""
    return hashlib.sha256(_traced_source().encode()).hexdigest()


def package_key(decoder: Decoder, portable: bool = False) -> str:
    """What a package depends on: the network's shape, the code traced, this torch, this machine.

    portable: the key of packages compiled for `PORTABLE_MARCH` and bundled with a packaged
    app, which has no source to read: the bundle is built from the code it ships with, so
    the code is left out, and the CPU is the portable level rather than this one."""
    arm = decoder.arm
    parts = [f"heads {decoder.nhead}", f"arm {arm.cross_coverage if arm else None} {arm.self_coverage if arm else None}",
             f"arm convolution in {arm.conv_dtype if arm else None}",
             repr([(k, tuple(v.shape)) for k, v in decoder.state_dict().items()]),
             torch.__version__, platform.machine(), platform.system()]  # fmt: skip
    if portable:
        parts.append(f"portable {PORTABLE_MARCH}")
    else:
        parts += [_traced_source(), str(torch.backends.cpu.get_cpu_capability())]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def portable_packages_run_here() -> bool:
    """Whether this CPU runs packages compiled for `PORTABLE_MARCH`."""
    return platform.machine().lower() in ("x86_64", "amd64") and (
        str(torch.backends.cpu.get_cpu_capability()) in PORTABLE_CAPABILITIES
    )


def _example(decoder: Decoder) -> tuple[Tensor, ...]:
    d = decoder.norm.normalized_shape[0]
    heads, layers = decoder.nhead, len(decoder.layers)
    # The sizes of a median expression's steps, not the smallest that export: inductor takes
    # each size's hint from these and runs a loop on one thread where the hint says it is
    # small. From 6 rows on a 5 x 12 grid, loops such as the CBAM's spatial gate ran on one:
    # a step alone took 0.89-0.92x the time at 20 rows (grids 5 x 22 to 12 x 60) and 0.98x
    # at 2-6 rows (session 32). The teacher-forced pass's hints made no difference.
    n, parents, cap, h, w = 20, 12, 24, 6, 24
    return (torch.zeros(n, dtype=torch.long), torch.tensor([3]), torch.zeros(n, layers, 2, heads, cap, d // heads),
            torch.zeros(parents, 2, layers, heads, h, w), torch.arange(n) % parents,
            torch.zeros(layers, heads, d // heads, h, w), torch.zeros(layers, heads, h, w, d // heads),
            _scalars(decoder, _scalar_names(decoder)))  # fmt: skip


def _step_spec() -> tuple[type[nn.Module], Any, Any]:
    """The step's graph, example inputs and symbolic sizes."""
    Dim = torch.export.Dim
    n, rows = Dim("rows", min=1, max=MAX_ROWS), Dim("parents", min=1, max=MAX_ROWS)
    cap, h, w = Dim("cache", min=2, max=MAX_CACHE), Dim("h", min=1, max=MAX_GRID[0]), Dim("w", min=1, max=MAX_GRID[1])
    dynamic = ({0: n}, None, {0: n, 4: cap}, {0: rows, 4: h, 5: w}, {0: n}, {3: h, 4: w}, {2: h, 3: w}, None)
    return _StepGraph, _example, dynamic


def _forward_spec() -> tuple[type[nn.Module], Any, Any]:
    """The same for the teacher-forced pass on one image (`_ForcedBody`)."""
    Dim = torch.export.Dim
    b, t = Dim("sequences", min=1, max=MAX_ROWS), Dim("length", min=2, max=MAX_CACHE)
    h, w = Dim("h", min=1, max=MAX_GRID[0]), Dim("w", min=1, max=MAX_GRID[1])
    dynamic = ({1: h, 2: w}, {1: h, 2: w}, {0: b, 1: t}, None)

    def example(dec: Decoder) -> tuple[Tensor, ...]:
        d = dec.norm.normalized_shape[0]
        tokens = torch.randint(4, dec.head.out_features, (6, 9))
        return (torch.zeros(1, 5, 12, d), torch.zeros(1, 5, 12, dtype=torch.bool), tokens,
                _scalars(dec, _scalar_names(dec)))  # fmt: skip

    return _ForcedGraph, example, dynamic


_SPECS = {"step": _step_spec, "forward": _forward_spec}


@dataclass(frozen=True)
class _Job:
    """What the compiling process is given."""

    kind: str  # "step" or "forward" (`_SPECS`)
    decoder: str  # a file holding the decoder (torch.save), beside the package being written
    tmp: str  # where to write the package
    conv_dtype: torch.dtype | None
    march: str | None  # the x86 level to compile for; None: this CPU's


def compile_step(decoder: Decoder, path: str | Path, conv_dtype: torch.dtype | None, portable: bool = False) -> Path:
    """Export and compile `decoder`'s step, with its ARM's convolution in `conv_dtype`
    (`AttentionRefinementModule.conv_dtype`), into a package at `path` (written whole or not
    at all), in a process of its own: for this CPU, or for `PORTABLE_MARCH` if `portable`.
    Raises `CompileUnavailable` with the reason when it cannot."""
    return _compile(decoder, "step", path, conv_dtype, portable)


def compile_forward(
    decoder: Decoder, path: str | Path, conv_dtype: torch.dtype | None, portable: bool = False
) -> Path:
    """Export and compile `decoder`'s teacher-forced pass on one image into a package at
    `path`, likewise."""
    return _compile(decoder, "forward", path, conv_dtype, portable)


def _compile(decoder: Decoder, kind: str, path: str | Path, conv_dtype: torch.dtype | None, portable: bool) -> Path:
    if decoder.arm is None or len(decoder.layers) < 2:
        raise CompileUnavailable("only decoders with the ARM and at least two layers are compiled")
    if getattr(sys, "frozen", False):  # the compiler starts `sys.executable`: that would be the app itself
        raise CompileUnavailable("a packaged app does not compile; a Python installation of hmer does")
    if _exiting.is_set():
        raise CompileCancelled("the app is quitting")
    path = Path(path)
    # The process exports a copy: the app keeps recognizing with the decoder meanwhile. The
    # copy goes by file: through the pipe that starts the process, its megabytes were still
    # being written when an app quit in its first moments, and the child printed a traceback.
    memo = {id(decoder.compiled_step): None, id(decoder.compiled_forward): None}
    detached = copy.deepcopy(decoder, memo=memo)
    tmp = ""
    try:  # a cache folder that cannot be written (full disk, read-only) also means "run eagerly"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=PARTIAL_PREFIX, suffix=".pt2", dir=path.parent)
        os.close(fd)
        torch.save(detached, tmp + ".decoder")
        march = PORTABLE_MARCH if portable else None
        _in_a_process_of_its_own(_Job(kind, tmp + ".decoder", tmp, conv_dtype, march))
        os.replace(tmp, path)
    except OSError as e:
        raise CompileUnavailable(f"cannot write the compiled decoder into {path.parent}: {e}") from e
    finally:
        for leftover in (tmp, tmp + ".decoder") if tmp else ():
            with contextlib.suppress(OSError):
                os.unlink(leftover)
    return path


def _in_a_process_of_its_own(job: _Job) -> None:
    """Compile in a child process. In the app's own process, the exporter's and inductor's
    Python held the interpreter: during a first start's compile the GUI thread stalled up to
    613 ms, and recognitions took up to 31 s (model card, "Compiling in a process of its
    own"); inductor also stayed imported, 150 MB and more. `spawn`, never `fork`: the app
    runs Qt and torch threads."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    # daemonic: a child still compiling when the app quits is ended with it (what it leaves
    # is removed by `remove_stale_partials`); inductor's own workers are plain subprocesses
    process = context.Process(target=_compile_child, args=(send, job), name=f"hmer-compile-{job.kind}", daemon=True)
    try:
        process.start()
    except (OSError, RuntimeError) as e:  # no processes allowed, no executable to spawn
        raise CompileUnavailable(f"no process to compile in: {type(e).__name__}: {e}") from e
    finally:
        send.close()
    try:
        error = receive.recv()
    except EOFError:  # killed (out of memory, or by the app quitting) or crashed before it could say why
        if _exiting.is_set():
            raise CompileCancelled("the app quit while the decoder was compiling") from None
        process.join()
        raise CompileUnavailable(f"the compiling process ended without a result (exit code {process.exitcode})") from None
    finally:
        receive.close()
    process.join()
    if error is not None:
        raise CompileUnavailable(error)


def _compile_child(result: Any, job: _Job) -> None:
    """The child's work: sends None once the package is written to `tmp`, else the reason."""
    with contextlib.suppress(OSError, AttributeError):  # yield the CPU to recognition; gcc inherits it
        os.nice(10)
    threading.Thread(target=_end_with, args=(os.getppid(),), daemon=True).start()
    try:
        _export_and_compile(torch.load(job.decoder, weights_only=False), job)
        result.send(None)
    except CompileUnavailable as e:
        result.send(str(e))
    except Exception as e:  # noqa: BLE001 - the exporter and the C++ toolchain fail in many ways; all mean "run eagerly"
        result.send(f"compiling the {job.kind} failed: {type(e).__name__}: {e}")
    finally:
        result.close()


def _end_with(parent: int) -> None:
    """End this process once `parent` has gone: an app that quits normally ends its daemonic
    children, but one killed or crashed does not, and its compile would go on for minutes."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _export_and_compile(decoder: Decoder, job: _Job) -> None:
    try:
        import torch._inductor  # a second and 150 MB, in the child only
    except ImportError as e:
        raise CompileUnavailable(f"torch's compiler cannot be imported: {e}") from e
    if not hasattr(torch._inductor, "aoti_compile_and_package"):
        raise CompileUnavailable(f"torch {torch.__version__} cannot compile ahead of time (2.6 or newer can)")
    decoder = decoder.eval()
    # The copy's ARM refines any batch at once (the grouping is a branch on sizes; `fits`
    # keeps large batches on the eager path, which groups them).
    decoder.arm.eval_group_elements = 2**62
    decoder.arm.conv_dtype = job.conv_dtype  # as keyed, whatever the live decoder switched to meanwhile
    if decoder.arm.cbam is not None:  # recognition p50 0.93x side by side (model card)
        decoder.arm.cbam.spatial_attention.as_shifted_sums = True
    graph, example, dynamic = _SPECS[job.kind]()
    # Runtime folding: what inductor derives from the weights (transposed copies) is derived
    # again when the weights are loaded anew.
    configs: dict[str, Any] = {"aot_inductor.use_runtime_constant_folding": True}
    if job.march is not None:  # 256-bit vectors: inductor's AVX2 kernels, not this CPU's AVX-512
        configs |= {"cpp.march": job.march, "cpp.simdlen": 256}
    with torch.no_grad():
        program = torch.export.export(graph(decoder), example(decoder), dynamic_shapes=dynamic)
        torch._inductor.aoti_compile_and_package(program, package_path=job.tmp, inductor_configs=configs)


def _remove_older_than(files: list[Path], max_age_s: float) -> list[Path]:
    """Delete those of `files` last modified more than `max_age_s` ago; returns them."""
    removed = []
    now = time.time()
    for file in files:
        with contextlib.suppress(OSError):  # gone meanwhile, or not ours to delete
            if now - file.stat().st_mtime > max_age_s:
                file.unlink()
                removed.append(file)
    return removed


def remove_stale_partials(folder: Path, max_age_s: float = 3600.0) -> list[Path]:
    """Delete what compiles cut short left behind (the app quit while compiling in the
    background, whose thread then never reaches its cleanup), and model libraries extracted
    to be loaded and never removed (a crash between the two; Windows keeps a loaded
    library's file). A file younger than `max_age_s` may be another app's, in use, and is kept."""
    return _remove_older_than([*folder.glob(f"{PARTIAL_PREFIX}*"), *folder.glob(f"{EXTRACTED_PREFIX}*")], max_age_s)


UNUSED_PACKAGE_AGE_S = 30 * 24 * 3600.0


def remove_unused_packages(folder: Path, keep: list[Path], max_age_s: float = UNUSED_PACKAGE_AGE_S) -> list[Path]:
    """Delete packages not used for `max_age_s` (30 days), other than `keep`: each update of
    hmer or torch compiles new ones (22 MB a pair), and the old would stay in the cache for
    good. A package's modification time is its last use (`mark_used`); a package of another
    installation sharing the cache, still in use there, is kept."""
    packages = [p for p in (*folder.glob("step-*.pt2"), *folder.glob("forced-*.pt2")) if p not in keep]
    return _remove_older_than(packages, max_age_s)


def mark_used(package: Path) -> None:
    """Record that `package` was loaded now (its modification time), for `remove_unused_packages`."""
    with contextlib.suppress(OSError):  # a read-only cache: it is never cleaned either
        os.utime(package)


def _weights_version(decoder: Decoder) -> tuple[int, int]:
    tensors = list(decoder.parameters()) + list(decoder.buffers())
    return id(decoder), sum(t._version for t in tensors)


# The C++ loader's arguments after the path (checked with torch 2.13 and 2.14): model name,
# single-threaded, runners, device index (-1: the CPU). Another torch's wrapper opens it instead.
_LOADER_ARGS = ("model", False, 1, -1)


class _Runner:
    """A compiled package's model, called through torch's C++ loader.

    torch's Python wrapper (`torch._inductor.aoti_load_package`) imports the whole compiler
    to open a package (0.8 s and 150 MB of resident memory here, at every start of the app),
    and parses the package's input and output layout again at every call. These packages
    take and return flat tuples of tensors, which the loader handles as they are."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader
        self._call = getattr(loader, "boxed_run", None) or loader.run

    @classmethod
    def open(cls, path: Path) -> _Runner:
        try:
            loader = torch._C._aoti.AOTIModelPackageLoader(str(path), *_LOADER_ARGS)
        except (AttributeError, TypeError):  # another torch's loader: its own wrapper opens it
            from torch._inductor import aoti_load_package

            loader = aoti_load_package(str(path)).loader
        return cls(loader)

    def __call__(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        return tuple(self._call(list(inputs)))

    def get_constant_fqns(self) -> list[str]:
        return self._loader.get_constant_fqns()

    def load_constants(self, constants: dict[str, Tensor]) -> None:
        self._loader.load_constants(constants, False, False)  # into the active buffer; a partial update


def _open_package(path: Path) -> PackageLibrary | _Runner:
    """The package's model, called without Python's interpreter where this torch and package
    allow (`PackageLibrary`), else through torch's loader, which holds it for each call."""
    try:
        return PackageLibrary(path)
    except LibraryUnavailable as e:
        log.info("calling %s through torch's loader: %s", path.name, e)
        return _Runner.open(path)


class _Package:
    """A compiled package bound to one decoder, whose weights it follows."""

    def __init__(self, package: Any, decoder: Decoder, conv_dtype: torch.dtype | None) -> None:
        self._package = package
        self._decoder = decoder
        self._version: tuple[int, int] | None = None
        self._names = _scalar_names(decoder)
        self._scalars = _scalars(decoder, self._names)
        self._conv_dtype = conv_dtype  # the ARM convolution's dtype it was compiled with
        self._lock = threading.Lock()
        self._refresh()

    @classmethod
    def load(cls, path: str | Path, decoder: Decoder, conv_dtype: torch.dtype | None) -> _Package:
        """Load a package compiled for a decoder of the same shape, with the ARM's convolution in
        `conv_dtype`. Raises `CompileUnavailable` when it cannot be loaded or does not fit."""
        try:
            return cls(_open_package(Path(path)), decoder, conv_dtype)
        except Exception as e:
            raise CompileUnavailable(f"{path}: not a usable compiled package ({type(e).__name__}: {e})") from e

    def _compiled_for_the_arm(self) -> bool:
        """Whether the decoder's ARM computes its convolution as this package does (the exact
        search switches the app's bf16 to fp32): the other runs eagerly."""
        return self._decoder.arm.conv_dtype == self._conv_dtype

    def _run(self, *inputs: Tensor) -> Any:
        """Run the package on contiguous inputs: it reads each input with the strides it was
        compiled for and does not check them, so a sliced tensor would be read as garbage."""
        return self._package(*(x.contiguous() for x in inputs))

    def _refresh(self) -> None:
        """Load the decoder's weights into the package when they changed (or never were)."""
        version = _weights_version(self._decoder)
        if version == self._version:
            return
        with self._lock:
            state = {f"body.dec.{k}": v.detach() for k, v in self._decoder.state_dict(keep_vars=True).items()}
            state["body.dec.pos_enc.pe"] = self._decoder.pos_enc.pe
            # Constants inductor derived from the weights (transposes, slices) are refolded
            # from these when the package runs next (compiled with runtime constant folding).
            wanted = [k for k in self._package.get_constant_fqns() if not k.startswith("_FOLDED_CONST_")]
            missing = [k for k in wanted if k not in state]
            if missing:
                raise CompileUnavailable(f"the compiled package wants weights this decoder lacks: {missing[:3]}")
            self._package.load_constants({k: state[k] for k in wanted})
            self._scalars = _scalars(self._decoder, self._names)
            self._version = version


class CompiledForward(_Package):
    """`Decoder.forward` in evaluation on one image, through a `compile_forward` package."""

    # Larger ARM inputs stay eager, which refines them in groups (the package would hold
    # every coverage map's intermediates at once): 32 MB of fp32 coverage. The rescoring
    # stays far below this: it reads its rows in groups (`model.beam._rescoring_groups`).
    max_arm_elements = 8_000_000

    def fits(self, memory: Tensor, memory_mask: Tensor, tokens: Tensor, image_index: Tensor | None) -> bool:
        _, h, w, _ = memory.shape
        b, t = tokens.shape
        arm = self._decoder.arm
        return (
            memory.shape[0] == 1 and memory.device.type == "cpu" and memory.dtype == torch.float32
            and self._compiled_for_the_arm()
            and 1 <= b <= MAX_ROWS and 2 <= t <= MAX_CACHE and 1 <= h <= MAX_GRID[0] and 1 <= w <= MAX_GRID[1]
            and b * t * arm.conv.in_channels * h * w <= self.max_arm_elements
            and (image_index is None and b == 1 or image_index is not None and not bool(image_index.any()))
        )  # fmt: skip

    def forward(self, memory: Tensor, memory_mask: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Main and auxiliary logits [b, t, V] and the last layer's refined attention [b, H, t, L]."""
        self._refresh()
        return self._run(memory, memory_mask, tokens, self._scalars)


class CompiledStep(_Package):
    """`Decoder.step` through a `compile_step` package."""

    def fits(self, state: DecoderState, n: int) -> bool:
        """Whether the package was compiled for this step's sizes and inputs."""
        cap = state.self_kv.shape[4]
        rows = state.coverage.shape[0]
        width = state.coverage.shape[-1] // state.height
        layers = state.cross_k.shape[0]
        arm_elements = rows * (layers - 1) * self._decoder.arm.conv.in_channels * state.coverage.shape[-1]
        return (
            # the ARM refines larger batches in groups, a branch the package was not compiled with
            arm_elements <= self._decoder.arm.eval_group_elements
            and state.memory_mask is None and state.cross_k.shape[1] == 1 and state.self_kv.device.type == "cpu"
            and state.self_kv.dtype == torch.float32 and self._compiled_for_the_arm()
            and 1 <= n <= MAX_ROWS and 1 <= rows <= MAX_ROWS and 2 <= cap <= MAX_CACHE
            and 1 <= state.height <= MAX_GRID[0] and 1 <= width <= MAX_GRID[1]
        )  # fmt: skip

    def step(self, state: DecoderState, tokens: Tensor, need_aux: bool) -> tuple[Tensor, Tensor | None, Tensor]:
        """`Decoder.step` through the package; the caller has checked `fits` and grown the cache."""
        if state.length == 0:  # once per search: weights change between recognitions, not within one
            self._refresh()
        t = state.length
        n = tokens.shape[0]
        h = state.height
        layers, _, heads, dh, length = state.cross_k.shape
        w = length // h
        rows = state.coverage_rows if state.coverage_rows is not None else torch.arange(n)
        coverage = state.coverage.view(state.coverage.shape[0], 2, layers, heads, h, w)
        main, aux, new_kv, new_coverage, attn = self._run(
            tokens, torch.tensor([t]), state.self_kv, coverage, rows,
            state.cross_k.view(layers, heads, dh, h, w), state.cross_v.view(layers, heads, h, w, dh), self._scalars,
        )  # fmt: skip
        state.self_kv[:, :, :, :, t] = new_kv
        state.coverage = new_coverage.view(n, 2, layers, heads, length)
        state.coverage_rows = None
        state.length += 1
        return main, (aux if need_aux else None), attn
