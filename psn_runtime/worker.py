"""One worker thread per model that runs its ORT calls, so the event loop stays free meanwhile (ORT
releases the GIL while it computes). A SimpleQueue hand-off costs less than run_in_executor's
concurrent.futures machinery, and calls of one model run in order."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any


def _set_result(fut: asyncio.Future, value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future, exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


class Worker:
    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future:
        """Run fn(*args) in the worker thread; the returned future (of the running loop) gets its result."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        if self._thread is None:
            self._start()
        self._jobs.put((loop, fut, fn, args))
        return fut

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._main, name=f"psn-ort-{self.name}", daemon=True)
                self._thread.start()

    def _main(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            loop, fut, fn, args = job
            try:
                result = fn(*args)
            except BaseException as e:  # handed to the awaiting coroutine, which decides
                callback, value = _set_exception, e
            else:
                callback, value = _set_result, result
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits for this result any more
                loop.call_soon_threadsafe(callback, fut, value)

    def stop(self) -> None:
        """Let the thread end after the job it is running (it is a daemon: it never blocks exit)."""
        if self._thread is not None:
            self._jobs.put(None)
