"""Fine-tuning in the background. Qt-free: a job is a future with progress callbacks
and a cancel switch; torch and the trainer are imported inside the worker."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from hmer_desktop.service import RecognitionService
from train.samples import SampleStore

T = TypeVar("T")


def cpu_count() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def thread_split(cores: int) -> tuple[int, int]:
    """Intra-op threads for (fine-tuning, recognition) while both run on `cores` CPUs.

    Each side asking for every core oversubscribes the CPU: a parallel operation then
    waits at its barrier for a thread that is not running. Measured on 2 cores
    (benchmarks/recognize_while_finetuning.py, three runs each): one thread each read
    ink during a fine-tune at p50 151 ms against 185 with both at the default, and the
    fine-tune trained 0.34 steps/s against 0.28; a single-threaded fine-tune beside a
    recognition still on two threads was the worst (p50 469 ms)."""
    recognize = max(1, cores // 2)
    return max(1, cores - recognize), recognize


def on_a_thread_of_its_own(work: Callable[[], T]) -> T:
    """Run `work` on a new thread and wait for it; its result or its exception.

    A thread's torch work runs on an OpenMP thread pool that lives as long as the thread.
    With GNU OpenMP, once two threads hold pools of more than one thread each, every
    parallel operation of the process is several times slower (measured on 2 cores: a
    greedy reading 29 -> 222 ms; README, "Threads"). A fine-tune's pool must therefore
    end with the fine-tune, not stay with the worker that queues the jobs."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = work()
        except BaseException as e:  # noqa: BLE001 (handed to the caller's thread as it was)
            outcome["error"] = e

    thread = threading.Thread(target=target, name="hmer-finetune-job")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


@dataclass(frozen=True)
class Progress:
    step: int
    total: int
    loss: float
    eta_s: float
    holdout_exprate: float | None = None
    stage: str | None = None  # after the last step: which check is running


class FinetuneJob:
    def __init__(self, future: Future, cancel: threading.Event) -> None:
        self.future = future
        self._cancel = cancel

    def cancel(self) -> None:
        self._cancel.set()


class FinetuneService:
    def __init__(self, store: SampleStore, models_dir: Path, recognition: RecognitionService | None = None) -> None:
        self.store = store
        self.models_dir = models_dir
        self.recognition = recognition  # given: it keeps to its share of the CPU while a job runs
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hmer-finetune")
        self._jobs: list[FinetuneJob] = []

    def start(
        self,
        base: Path,
        crohme_dir: Path | None,
        max_steps: int,
        on_progress: Callable[[Progress], None],
        trainable: str = "encoder",
        max_forgetting: float | None = 1.0,
    ) -> FinetuneJob:
        """max_forgetting: ExpRate points the CROHME check may lose (None: no limit); it
        needs `crohme_dir`."""
        cancel = threading.Event()
        parent = self.store.active_model()

        def work():
            from train.data import Example
            from train.finetune import FinetuneConfig, crohme_replay_and_check, finetune

            samples = [Example(f"sample{s.id}", s.strokes, s.tokens, source=f"sample {s.id}") for s in self.store.samples()]
            replay = base_eval = None
            if crohme_dir is not None and (crohme_dir / "train").exists():
                replay, base_eval = crohme_replay_and_check(crohme_dir, self.store.vocab)
            start = time.monotonic()

            def progress(step: int, total: int, info: dict) -> None:
                eta = (time.monotonic() - start) / max(1, step) * (total - step)
                on_progress(Progress(step, total, info["loss"], eta, info.get("holdout_exprate"), info.get("stage")))

            self.models_dir.mkdir(parents=True, exist_ok=True)
            out = self.models_dir / f"finetuned-{time.strftime('%Y%m%d-%H%M%S')}.pt"
            config = FinetuneConfig(max_steps=max_steps, trainable=trainable, max_forgetting=max_forgetting)
            report = finetune(base, samples, out, config, replay=replay, base_eval=base_eval, progress=progress,
                              cancel=cancel)  # fmt: skip
            version = None
            if report.output:
                version = self.store.add_model(report.output, parent, report.to_dict(), note=f"from {base.name}")
            return report, version

        def run():
            import torch

            finetune_threads, recognize_threads = thread_split(cpu_count())
            before = torch.get_num_threads()
            torch.set_num_threads(finetune_threads)  # this worker's own pool
            if self.recognition is not None:
                self.recognition.threads = recognize_threads
            try:
                return work()
            finally:
                torch.set_num_threads(before)
                if self.recognition is not None:
                    self.recognition.threads = 0

        job = FinetuneJob(self._executor.submit(on_a_thread_of_its_own, run), cancel)
        self._jobs.append(job)
        return job

    def shutdown(self) -> None:
        """Cancel running jobs (they write nothing) and wait for the worker to stop."""
        for job in self._jobs:
            job.cancel()
        self._executor.shutdown(wait=True, cancel_futures=True)
