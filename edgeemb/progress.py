"""Progress reporting without printing: library code calls `track`, the CLI decides how it shows.

The library never prints. Long loops wrap their iterable in `track(...)`; by default that is a
no-op, and the CLI installs a renderer (rich progress bars) with `reporting(...)`.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
Tracker = Callable[[Iterable[T], str, int | None], Iterable[T]]

_tracker: contextvars.ContextVar[Tracker | None] = contextvars.ContextVar("edgeemb_tracker", default=None)


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterable[T]:
    """Yield from `items`, reporting progress to the installed renderer, if any."""
    tracker = _tracker.get()
    return items if tracker is None else tracker(items, description, total)


@contextlib.contextmanager
def reporting(tracker: Tracker) -> Iterator[None]:
    """Install `tracker` for the duration of the block."""
    token = _tracker.set(tracker)
    try:
        yield
    finally:
        _tracker.reset(token)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence other libraries' warnings and log lines (exporters, quantisers): the library never prints."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


@contextlib.contextmanager
def silenced_output() -> Iterator[None]:
    """Point the process's stdout and stderr (file descriptors 1 and 2) at /dev/null for the block:
    for tools that print from C or through their own progress bars (llama.cpp's quantiser, model2vec)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)
