"""Recognition off the GUI thread. Qt-free: requests return concurrent futures.

One worker thread owns the model. A newer request supersedes older ones that
have not started, so typing ahead never queues stale work; a request for newer
ink also stops a running one at its next decoder step, whose answer the app
would not show (a beam search on long ink can take a second, and the next
stroke's preview would wait for it). The model module (and torch) is imported
inside the worker, so importing this file is cheap.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from model.cancel import RecognitionCancelled, ShouldStop
from model.prediction import Prediction

log = logging.getLogger(__name__)


class Superseded(Exception):
    """A newer request arrived before this one started, or one for newer ink while it ran."""


class RecognizerLike(Protocol):
    device: Any
    exact_search: bool  # False: the beam search drops beams far behind the best
    threads: int  # at most this many intra-op threads per recognition (0: torch's default)

    def recognize(
        self, strokes: list[np.ndarray], beam_size: int = 10, should_stop: ShouldStop | None = None
    ) -> Prediction: ...

    def recognize_image(
        self, array: np.ndarray, beam_size: int = 10, should_stop: ShouldStop | None = None
    ) -> Prediction: ...


def load_recognizer(checkpoint: Path | None, device: str) -> RecognizerLike:
    from model.compiled_step import enabled
    from model.recognizer import Recognizer

    recognizer = Recognizer.load(checkpoint, device=device)
    if enabled():  # faster decoder steps; loaded (or compiled once per machine) in the background
        log.info(recognizer.use_compiled_step(compile_if_missing="background"))
    return recognizer


@dataclass(frozen=True)
class Result:
    request_id: int
    ink_version: int  # the document version the request read
    prediction: Prediction
    latency_ms: float
    device: str
    decoder: str = ""  # how the decoder ran, in words (`Recognizer.decoder_status`)


class RecognitionService:
    def __init__(
        self,
        checkpoint: Path | None = None,
        device: str = "auto",
        loader: Callable[[Path | None, str], RecognizerLike] = load_recognizer,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        # The one thread that loads the model and recognizes. Several services in one process
        # (benchmarks comparing ways) share one (`executor`, left running by `shutdown`): with
        # GNU OpenMP, a second thread whose torch work runs on several threads makes every
        # parallel operation in the process several times slower (see README, "Threads").
        self._owns_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="hmer-recognition")
        self._loader = loader
        self._checkpoint = checkpoint
        self._device = device
        self._recognizer: RecognizerLike | None = None
        self._lock = threading.Lock()
        self._latest = 0
        self._latest_ink: int | None = None  # the ink version of the newest request
        self.exact_search = False  # read by each request when it starts
        self.threads = 0  # likewise; lowered while a fine-tune shares the CPU (finetune_service.thread_split)

    @property
    def checkpoint(self) -> Path | None:
        return self._checkpoint

    def configure(self, checkpoint: Path | None, device: str) -> None:
        """Use another model; it is loaded by the worker on the next request."""
        with self._lock:
            self._checkpoint, self._device = checkpoint, device
            self._recognizer = None

    def _model(self) -> RecognizerLike:
        with self._lock:
            if self._recognizer is None:
                self._recognizer = self._loader(self._checkpoint, self._device)
            return self._recognizer

    def preload(self) -> Future:
        """Load the model in the background (errors surface through the future)."""
        return self._executor.submit(self._model)

    def recognize(self, strokes: list[np.ndarray], ink_version: int, beam_size: int) -> Future:
        strokes = [np.array(s, dtype=np.float64, copy=True) for s in strokes]

        def work(rec: RecognizerLike, stop: ShouldStop) -> Prediction:
            return rec.recognize(strokes, beam_size, should_stop=stop)

        return self._submit(work, ink_version)

    def recognize_image(self, array: np.ndarray, ink_version: int, beam_size: int) -> Future:
        array = np.array(array, copy=True)

        def work(rec: RecognizerLike, stop: ShouldStop) -> Prediction:
            return rec.recognize_image(array, beam_size, should_stop=stop)

        return self._submit(work, ink_version)

    def _submit(self, work: Callable[[RecognizerLike, ShouldStop], Prediction], ink_version: int) -> Future:
        with self._lock:
            self._latest += 1
            self._latest_ink = ink_version
            request_id = self._latest

        def ink_changed() -> bool:
            # Only newer ink stops a running request: the beam search that follows a
            # preview of the same ink must not stop the preview (its answer is shown).
            return self._latest_ink != ink_version

        def run() -> Result:
            if request_id != self._latest:
                raise Superseded()
            rec = self._model()
            rec.exact_search = self.exact_search
            rec.threads = self.threads
            start = time.perf_counter()
            try:
                prediction = work(rec, ink_changed)
            except RecognitionCancelled as stopped:
                raise Superseded() from stopped
            return Result(request_id, ink_version, prediction, (time.perf_counter() - start) * 1000,
                          str(getattr(rec.device, "type", rec.device)), getattr(rec, "decoder_status", ""))  # fmt: skip

        return self._executor.submit(run)

    def shutdown(self) -> None:
        """Stop the worker: queued requests are cancelled, a running one finishes (a shared
        executor is left to its owner)."""
        if self._owns_executor:
            self._executor.shutdown(wait=True, cancel_futures=True)
