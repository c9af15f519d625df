"""Stopping a recognition part-way. In the app, new ink makes a reading of the old ink
useless; a search that checks between decoder steps frees the worker within one step
instead of finishing a beam search that can take a second on long ink."""

from __future__ import annotations

from collections.abc import Callable

ShouldStop = Callable[[], bool]  # asked between steps; True stops the recognition


class RecognitionCancelled(Exception):
    """The caller's `should_stop` answered True; nothing was returned."""


def stop_if_asked(should_stop: ShouldStop | None) -> None:
    if should_stop is not None and should_stop():
        raise RecognitionCancelled("the recognition was stopped by its caller")
