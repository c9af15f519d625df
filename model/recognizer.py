"""The inference API used by the app and the command line.

    rec = Recognizer.load()                    # the bundled model
    pred = rec.recognize(strokes, beam_size=10)
    pred.latex, pred.attention, pred.structure_agrees, ...
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.beam import beam_search_memory
from model.cancel import ShouldStop, stop_if_asked
from model.checkpoint import CheckpointError, load_checkpoint
from model.config import RasterConfig
from model.encoder import FoldedEncoder
from model.greedy import greedy_search_memory
from model.hmer import HMER, direction_targets
from model.image_input import image_to_input
from model.paths import BUNDLED_CHECKPOINT, asset_path
from model.prediction import Alternative, Prediction
from model.rasterize import Raster, rasterize
from model.replacements import token_replacements
from model.vocab import Vocabulary

DOWNSAMPLE = 16  # the DenseNet encoder's total stride

log = logging.getLogger(__name__)


def default_compiled_dir() -> Path:
    """Where compiled decoder steps are kept: the user's cache folder."""
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("hmer")) / "compiled"


def bundled_compiled_dir() -> Path:
    """Where a packaged app keeps the compiled decoder built with it (packaging/compile_decoder.py)."""
    return asset_path("compiled")


def _lower_this_thread_priority() -> None:
    """Let a background compile yield the CPU to recognition (Linux: niceness is per thread,
    and the compiler processes it starts inherit it)."""
    if hasattr(os, "setpriority") and hasattr(threading, "get_native_id"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


def length_limit(n_strokes: int, cap: int = 200) -> int:
    """Beam-search length bound for ink of n strokes. No CROHME training expression has
    more than 3.25 tokens per stroke, so this never cuts a real reading short, and it
    stops a weak model's loops (`2 6 6 6 ...`) long before the cap."""
    return min(cap, 10 + 4 * n_strokes)


def cpu_has_bf16_units() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is
    emulated and slower than fp32. False when this torch cannot tell."""
    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        check = getattr(torch.cpu, name, None)
        with contextlib.suppress(Exception):
            if check is not None and check():
                return True
    return False


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("CUDA was requested but no CUDA device is available")
    return dev


@contextlib.contextmanager
def _intra_op_threads(device: torch.device, threads: int) -> Iterator[None]:
    """Run a block with `threads` intra-op threads on CPU (0: leave as is)."""
    before = torch.get_num_threads()
    if device.type != "cpu" or threads <= 0 or threads >= before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _ink_key(strokes: list[np.ndarray], config: RasterConfig) -> bytes | None:
    """A digest of the ink and the rasterizer's settings (None for ink too malformed to
    digest, which `rasterize` then rejects with the reason)."""
    digest = hashlib.blake2b(repr(config).encode(), digest_size=16)
    try:
        for stroke in strokes:
            points = np.ascontiguousarray(np.asarray(stroke, dtype=np.float64))
            digest.update(repr(points.shape).encode())
            digest.update(points.tobytes())
    except (TypeError, ValueError):
        return None
    return digest.digest()


# Beam threshold (nats) of the app's search: a beam trailing its direction's best candidate by
# more is dropped. Measured on the fifth release (beam 10): the exact search's reading for 985 of
# 986 expressions of CROHME 2014 and 1,147 of 1,147 of 2016 (ExpRate unchanged), the truth among
# the first five for 68.00% of 2016 (exact 68.09%), recognition p50 0.84x and mean 0.90x side by
# side. 5 nats saved more on long ink (p95 0.85x) but lost 0.78 points of the first five.
DEFAULT_PRUNE = 7.0


class Recognizer:
    def __init__(
        self, model: HMER, vocab: Vocabulary, device: torch.device, meta: dict[str, Any] | None = None,
        path: Path | None = None,
    ) -> None:  # fmt: skip
        self.model = model.to(device).eval()
        if device.type == "cpu":
            # oneDNN's convolutions run faster on NHWC: measured 9.6 -> 7.3 ms per encode
            self.model.encoder.to(memory_format=torch.channels_last)
        self.vocab = vocab
        self.device = device
        self.meta = meta or {}
        self.path = path
        self.max_len = 200
        self.early_stopping = False  # True: a direction stops once it holds beam_size finished hypotheses
        self.nbest = 5  # alternatives offered; only hypotheses that can be among them are rescored
        self.well_formed = True  # readings keep model.syntax.SyntaxRules (False: as the reference decodes)
        self.prune: float | None = DEFAULT_PRUNE  # None: the reference's exact search
        # The ARM's convolution in bf16 where the CPU computes it natively: the same reading for
        # 980 of CROHME 2014's 986 expressions and 1,144 of 2016's 1,147, the same ExpRate, and
        # 0.90-0.93x the time at p95 side by side, the median unchanged (model card, "The ARM's
        # convolution in bf16"). The exact search keeps the reference's fp32 throughout.
        self._bf16_arm = device.type == "cpu" and model.decoder.arm is not None and cpu_has_bf16_units()
        self._set_arm_dtype()
        # One image's DenseNet is a chain of small convolutions; on CPU, splitting each over
        # threads costs more than it gains (measured on 2 cores: encode p50 23 -> 14 ms with 1
        # thread), while the beam search's batched steps still gain from all threads. Checked
        # again with the folded encoder (session 30): alone, two threads encode faster (0.86x),
        # but between beam searches, as the app runs it, one is (encode p50 6.9 against 11.4 ms).
        self.encoder_threads = 1
        # At most this many threads for a whole recognition (0: torch's default). The app lowers
        # it while a fine-tune trains beside it, so that the two never ask for more threads than
        # the CPU has (see hmer_desktop.finetune_service.thread_split).
        self.threads = 0
        self._lock = threading.Lock()  # one decode at a time per model
        self._decoder_status = "eager: the compiled decoder is not in use"  # what `use_compiled_step` did
        self._status_lock = threading.Lock()
        self._last_encoding: tuple[tuple, tuple[torch.Tensor, torch.Tensor]] | None = None
        self._folded: tuple[tuple[int, int], FoldedEncoder] | None = None  # (weights version, encoder)
        self._last_raster: tuple[bytes, Raster] | None = None  # (ink key, its image)

    @classmethod
    def load(cls, path: str | Path | None = None, device: str = "auto") -> Recognizer:
        """Load a checkpoint (default: the bundled one); errors are CheckpointError with the reason."""
        if path is None:
            path = asset_path(BUNDLED_CHECKPOINT)
            if not path.exists():
                raise CheckpointError(
                    f"no bundled model at {path}. Pass a checkpoint with --checkpoint (in the app: "
                    "Preferences → Checkpoint), or train one: `hmer-train --config cpu_small --data DIR "
                    "--out RUN` writes RUN/best.pt."
                )
        path = Path(path)
        model, vocab, meta = load_checkpoint(path)
        return cls(model, vocab, resolve_device(device), meta, path)

    def use_compiled_step(self, cache_dir: str | Path | None = None, compile_if_missing: str = "no") -> str:
        """Run the decoder's steps and its teacher-forced passes (the rescoring, the attention
        maps) through ahead-of-time compiled packages (`model.compiled_step`), loaded from
        `cache_dir` (default: the user's cache).

        compile_if_missing: "no" (use packages only if they are there), "now" (compile if
        needed and wait, about two minutes) or "background" (load or compile from a background
        thread and switch when ready; recognition runs eagerly meanwhile). Either way the
        compiler runs in a low-priority process of its own. A packaged app, which cannot
        compile, loads the packages bundled with it (`cache_dir` default: `bundled_compiled_dir`),
        at once. Returns what happened, in words, also kept in `decoder_status`; any failure
        leaves the eager code in place and is logged, never raised.
        """
        with self._status_lock:  # a background thread's final word comes after this one
            self._decoder_status = self._use_compiled_step(cache_dir, compile_if_missing)
            return self._decoder_status

    @property
    def decoder_status(self) -> str:
        """How the decoder runs, in words: what `use_compiled_step` last said, unless the
        compiled code has failed since and the decoder dropped it."""
        decoder = self.model.decoder
        if self._decoder_status.startswith("using") and decoder.compiled_step is None and decoder.compiled_forward is None:
            return "eager: the compiled decoder failed and is no longer used (the log says why)"
        return self._decoder_status

    @decoder_status.setter
    def decoder_status(self, status: str) -> None:
        self._decoder_status = status

    def _use_compiled_step(self, cache_dir: str | Path | None, compile_if_missing: str) -> str:
        from model.compiled_step import (
            PORTABLE_MARCH,
            CompileCancelled,
            CompiledForward,
            CompiledStep,
            CompileUnavailable,
            compile_forward,
            compile_step,
            mark_used,
            package_key,
            portable_packages_run_here,
            remove_stale_partials,
            remove_unused_packages,
        )

        if compile_if_missing not in ("no", "now", "background"):
            raise ValueError(f"compile_if_missing is 'no', 'now' or 'background', not {compile_if_missing!r}")
        if self.device.type != "cpu":
            return "not compiled: the compiled decoder is for the CPU"
        decoder = self.model.decoder
        # what the packages compute in, fixed here: the exact search may switch it meanwhile
        conv_dtype = decoder.arm.conv_dtype if decoder.arm is not None else None
        bundled = bool(getattr(sys, "frozen", False))
        if bundled:  # built for any x86-64-v3 CPU with the app, from the code it ships with
            if not portable_packages_run_here():
                return f"not compiled: the packages bundled with this app need an {PORTABLE_MARCH} (AVX2) CPU"
            folder, key = Path(cache_dir or bundled_compiled_dir()), package_key(decoder, portable=True)
            compile_if_missing = "no"
        else:
            folder = Path(cache_dir or default_compiled_dir())
            try:
                key = package_key(decoder)
            except CompileUnavailable as e:
                return f"not compiled: {e}"
        kinds = {  # attribute of the decoder: (package file, how to compile it, how to load it)
            "compiled_step": (folder / f"step-{key}.pt2", compile_step, CompiledStep),
            "compiled_forward": (folder / f"forced-{key}.pt2", compile_forward, CompiledForward),
        }

        def prepare(compile_missing: bool) -> str:
            if not bundled:  # the app's own folder is never cleaned
                remove_stale_partials(folder)
                remove_unused_packages(folder, keep=[path for path, _, _ in kinds.values()])
            ready, problems = {}, []
            started = time.perf_counter()
            for attribute, (path, compile_package, package_type) in kinds.items():
                if path.exists():
                    try:
                        ready[attribute] = package_type.load(path, decoder, conv_dtype)
                        if not bundled:
                            mark_used(path)
                        continue
                    except CompileUnavailable as e:
                        if bundled:  # the app's own files are left as they are
                            problems.append(str(e))
                            continue
                        log.warning("%s; it is deleted", e)
                        path.unlink(missing_ok=True)
                if not compile_missing:
                    problems.append(f"no package at {path}")
                    continue
                try:
                    compile_package(decoder, path, conv_dtype)
                    ready[attribute] = package_type.load(path, decoder, conv_dtype)
                except CompileCancelled as e:
                    return f"not compiled: {e}"
                except CompileUnavailable as e:
                    log.warning("runs eagerly: %s", e)
                    problems.append(str(e))
            with self._lock:  # not in the middle of a recognition
                for attribute, package in ready.items():
                    setattr(decoder, attribute, package)
            if not ready:
                return "not compiled: " + "; ".join(problems)
            names = " and ".join({"compiled_step": "step", "compiled_forward": "teacher-forced pass"}[a] for a in ready)
            log.info("compiled decoder ready in %.0f s", time.perf_counter() - started)
            return f"using the compiled decoder {names} from {folder}" + (f" ({'; '.join(problems)})" if problems else "")

        if compile_if_missing != "background":
            return prepare(compile_if_missing == "now")

        def in_background() -> None:
            _lower_this_thread_priority()
            status = prepare(True)
            with self._status_lock:
                self._decoder_status = status
            log.info(status)

        threading.Thread(target=in_background, name="hmer-compiled-decoder", daemon=True).start()
        return f"preparing the compiled decoder in the background ({folder})"

    @property
    def exact_search(self) -> bool:
        """True: the beam search keeps every beam, as the reference's does (slower)."""
        return self.prune is None

    @exact_search.setter
    def exact_search(self, exact: bool) -> None:
        self.prune = None if exact else DEFAULT_PRUNE
        self._set_arm_dtype()

    @property
    def bf16_arm(self) -> bool:
        """True: the ARM's convolution computes in bf16 (except in the exact search)."""
        return self._bf16_arm

    @bf16_arm.setter
    def bf16_arm(self, on: bool) -> None:
        self._bf16_arm = on
        self._set_arm_dtype()

    def _set_arm_dtype(self) -> None:
        if self.model.decoder.arm is not None:
            self.model.decoder.arm.conv_dtype = torch.bfloat16 if self.bf16_arm and not self.exact_search else None

    @property
    def config(self):
        return self.model.config

    def recognize(
        self, strokes: list[np.ndarray], beam_size: int = 10, should_stop: ShouldStop | None = None
    ) -> Prediction:
        """Strokes: arrays [n, 2+] of x, y (pressure etc. ignored), in any units.
        should_stop, asked between decoder steps, can end the work early: then
        `RecognitionCancelled` is raised instead of returning (the app's newer ink)."""
        t0 = time.perf_counter()
        # the app reads each ink twice (the preview, then the beam search): draw it once
        key = _ink_key(strokes, self.model.config.raster)
        kept = self._last_raster
        if key is not None and kept is not None and kept[0] == key:
            raster = kept[1]
        else:
            raster = rasterize(strokes, self.model.config.raster)
            self._last_raster = (key, raster) if key is not None else None
        timings = {"rasterize": (time.perf_counter() - t0) * 1000}
        max_len = length_limit(len(strokes), self.max_len)
        ink_to_image = raster.transform.as_matrix()
        return self._decode(raster.image, ink_to_image, beam_size, timings, max_len, should_stop)

    def recognize_image(
        self, array: np.ndarray, beam_size: int = 10, should_stop: ShouldStop | None = None
    ) -> Prediction:
        """A photo or scan of handwriting: grayscale or RGB(A), dark ink on light or the reverse."""
        t0 = time.perf_counter()
        image = image_to_input(array, self.model.config.raster)
        timings = {"rasterize": (time.perf_counter() - t0) * 1000}
        return self._decode(image, None, beam_size, timings, self.max_len, should_stop)

    def _encode(self, image: np.ndarray, imgs: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's output for `image`, reusing the last one when the same image comes
        again with the same weights: the app reads each ink twice, greedily after a stroke
        and with the beam search when the pen rests."""
        tensors = itertools.chain(self.model.parameters(), self.model.buffers())
        # bumped by every in-place change: a fine-tune, a load
        weights = (id(self.model), sum(t._version for t in tensors))
        key = (image.shape, hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).digest(), weights)
        if self._last_encoding is not None and self._last_encoding[0] == key:
            return self._last_encoding[1]
        if self._folded is None or self._folded[0] != weights:
            self._folded = (weights, FoldedEncoder(self.model.encoder))
        with _intra_op_threads(self.device, self.encoder_threads):
            encoding = self._folded[1](imgs, masks)
        self._last_encoding = (key, encoding)
        return encoding

    def forget_encoding(self) -> None:
        """Drop the kept image and encoding, so that the next recognition pays for its own
        (benchmarks)."""
        with self._lock:
            self._last_encoding = None
            self._last_raster = None

    @torch.inference_mode()
    def _decode(
        self, image: np.ndarray, ink_to_image: np.ndarray | None, beam_size: int, timings: dict[str, float],
        max_len: int, should_stop: ShouldStop | None = None,
    ) -> Prediction:  # fmt: skip
        with self._lock, _intra_op_threads(self.device, self.threads):
            stop_if_asked(should_stop)  # it may have waited for the lock
            imgs = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].to(self.device)
            if self.device.type == "cpu":
                imgs = imgs.contiguous(memory_format=torch.channels_last)
            masks = torch.zeros(1, *image.shape, dtype=torch.bool, device=self.device)
            t = time.perf_counter()
            memory, mem_mask = self._encode(image, imgs, masks)
            timings["encode"] = (time.perf_counter() - t) * 1000
            t = time.perf_counter()
            steps: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
            explained = None  # the best reading's left-to-right outputs, if the search has them
            if beam_size > 1:
                hyps = beam_search_memory(self.model, memory, mem_mask, self.vocab, beam_size, max_len,
                                          early_stopping=self.early_stopping, nbest=self.nbest,
                                          well_formed=self.well_formed, prune=self.prune,
                                          should_stop=should_stop, explain=True)[0]  # fmt: skip
                nbest = [(list(h.ids), h.score) for h in hyps]
                explained = hyps[0].outputs if hyps else None
            else:
                ids, logp = greedy_search_memory(self.model, memory, mem_mask, self.vocab, max_len,
                                                 on_step=lambda *outputs: steps.append(outputs),
                                                 well_formed=self.well_formed,
                                                 should_stop=should_stop)[0]  # fmt: skip
                nbest = [(ids, logp / (len(ids) + 1))]
            timings["search"] = (time.perf_counter() - t) * 1000
            stop_if_asked(should_stop)
            t = time.perf_counter()
            best_ids = nbest[0][0]
            if steps:  # greedy: the search's own steps explain its reading
                main = torch.stack([m for m, _, _ in steps], dim=1)  # [1, T, V]
                aux = torch.stack([a for _, a, _ in steps], dim=1)  # [1, T, V]
                attn = torch.stack([w for _, _, w in steps], dim=2)  # [1, H, T, L]
            elif explained is not None:  # beam: the steps or the rescoring that produced it
                main, aux, attn = explained[0][None], explained[1][None], explained[2][None, None]  # one "head": the mean
            else:
                tgt, _ = direction_targets([best_ids], self.vocab, reverse=False)
                main, aux, attn = self.model.decoder(memory, mem_mask, tgt.to(self.device), need_attention=True)
            timings["explain"] = (time.perf_counter() - t) * 1000
        n = len(best_ids)
        probs = torch.softmax(main[0].float(), dim=-1)  # [n+1, V]: what each position could have been
        token_probs = probs[torch.arange(n), torch.tensor(best_ids, dtype=torch.long)].cpu().numpy() if n else np.zeros(0)
        structure_ids = aux[0, :n].argmax(dim=-1).tolist()
        h, w = memory.shape[1:3]
        attention = attn[0, :, :n].mean(dim=0).reshape(n, h, w).float().cpu().numpy()  # [n, h, w]
        tokens = self.vocab.decode(best_ids)
        # A score is the sum of the two directions' per-token log-probability averages. Times
        # (tokens+1)/2 it becomes a whole-sequence log-probability; using the best reading's
        # length for all keeps the order of the list, and the spread of sequence probabilities
        # (raw averages would make every alternative look about equally likely).
        scale = (len(nbest[0][0]) + 1) / 2
        scores = np.array([s for _, s in nbest], dtype=np.float64)
        finite = np.isfinite(scores)
        rel = np.exp(scale * (scores - scores[finite].max())) if finite.any() else np.ones_like(scores)
        rel /= rel.sum()
        alternatives = [
            Alternative(" ".join(self.vocab.decode(ids)), self.vocab.decode(ids), float(s), float(p))
            for (ids, s), p in zip(nbest, rel)
        ]
        timings["total"] = sum(timings.values())
        return Prediction(
            latex=" ".join(tokens),
            tokens=tokens,
            score=float(nbest[0][1]) if math.isfinite(nbest[0][1]) else float("-inf"),
            token_probs=token_probs.astype(np.float32),
            attention=attention.astype(np.float32),
            image=image.astype(np.float32),
            ink_to_image=ink_to_image,
            downsample=DOWNSAMPLE,
            structure=self.vocab.decode(structure_ids),
            expected_structure=self.vocab.decode(self.vocab.structure(best_ids)),
            alternatives=alternatives,
            token_alternatives=token_replacements(tokens, probs.cpu().numpy(), self.vocab),
            timings_ms={k: round(v, 2) for k, v in timings.items()},
            device=self.device.type,
        )
