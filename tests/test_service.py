"""The recognition service, without Qt: newer ink stops a running recognition at its
next decoder step; a second request for the same ink does not."""

from __future__ import annotations

import threading

import pytest

from hmer_desktop.service import RecognitionService, Superseded
from tests.synthetic_ink import ink_for

INK = ink_for("\\frac { a } { b } - 3")


class _Paused:
    """A real recognizer whose recognitions pause at their third step until released,
    counting the steps each ran (the service's stop check is asked once per step)."""

    def __init__(self, real) -> None:
        self.real = real
        self.device = real.device
        self.exact_search = False
        self.threads = 0
        self.paused = threading.Event()
        self.release = threading.Event()
        self.steps: list[int] = []  # per recognition, how often its stop check was asked

    def recognize(self, strokes, beam_size=10, should_stop=None):
        self.steps.append(0)
        first = len(self.steps) == 1

        def check() -> bool:
            self.steps[-1] += 1
            if first and self.steps[-1] == 3:
                self.paused.set()
                self.release.wait(30)
            return should_stop()

        return self.real.recognize(strokes, beam_size, should_stop=check)


@pytest.fixture
def paused_service(tiny_checkpoint):
    from model.recognizer import Recognizer

    holder: list[_Paused] = []

    def loader(path, device):
        holder.append(_Paused(Recognizer.load(tiny_checkpoint, device="cpu")))
        return holder[0]

    service = RecognitionService(None, "cpu", loader=loader)
    service.preload().result(timeout=60)
    yield service, holder[0]
    holder[0].release.set()
    service.shutdown()


def test_new_ink_stops_a_running_beam_search_at_its_next_step(paused_service):
    service, rec = paused_service
    old = service.recognize(INK, ink_version=1, beam_size=10)
    assert rec.paused.wait(30)  # the beam search of version 1 is running
    new = service.recognize(INK[:-1], ink_version=2, beam_size=1)  # a stroke is added (here: removed)
    rec.release.set()
    with pytest.raises(Superseded):
        old.result(timeout=60)
    assert rec.steps[0] == 3  # it stopped at the step it was on, not after the whole search
    result = new.result(timeout=60)
    assert result.ink_version == 2 and result.prediction.tokens


def test_a_search_of_the_same_ink_lets_the_running_preview_finish(paused_service):
    service, rec = paused_service
    preview = service.recognize(INK, ink_version=5, beam_size=1)
    assert rec.paused.wait(30)
    beam = service.recognize(INK, ink_version=5, beam_size=10)  # the pen rests: same ink
    rec.release.set()
    first, second = preview.result(timeout=60), beam.result(timeout=60)
    assert first.ink_version == second.ink_version == 5
    assert first.prediction.tokens == second.prediction.tokens  # the tiny model reads it either way
    assert rec.steps[0] > 3  # the preview ran to its end


class _Recorded:
    """A stand-in recognizer that records the thread each call ran on."""

    device = "cpu"
    exact_search = False
    threads = 0

    def __init__(self) -> None:
        self.threads_seen: list[threading.Thread] = []

    def recognize(self, strokes, beam_size=10, should_stop=None):
        self.threads_seen.append(threading.current_thread())
        return "a reading"  # passed through as the result's prediction


def test_services_given_one_worker_run_on_it_and_leave_it_to_its_owner():
    # Benchmarks comparing ways of scheduling keep all torch work on one thread, as the app
    # does (a second multi-threaded OpenMP pool slows every parallel operation; README).
    from concurrent.futures import ThreadPoolExecutor

    worker = ThreadPoolExecutor(max_workers=1)
    recognizers = [_Recorded(), _Recorded()]
    services = [RecognitionService(None, "cpu", loader=lambda p, d, r=r: r, executor=worker) for r in recognizers]
    for version, service in enumerate(services):
        service.recognize(INK, ink_version=version, beam_size=1).result(timeout=30)
    services[0].shutdown()
    services[1].recognize(INK, ink_version=9, beam_size=1).result(timeout=30)  # still served
    seen = {t for r in recognizers for t in r.threads_seen}
    assert len(seen) == 1 and seen != {threading.current_thread()}
    services[1].shutdown()
    worker.shutdown()
