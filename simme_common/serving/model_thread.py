"""ModelThread: the one long-lived thread a native model (llama.cpp) is built on and every call of it runs on."""

from __future__ import annotations

import threading


class ModelThread:
    """One long-lived thread that makes every call of a native model, its construction included.

    llama.cpp's OpenMP runtime keeps a thread team per calling thread. A Llama built on one thread and run from
    another left the builder's team competing for the 2 cores: decode of the default twin (Q4_0, 2 cores) ran at
    28-64 tokens/s that way against 94-98 when built and run on the same thread (prefill 0.36-0.62 s vs 0.32 s).
    """

    def __init__(self, name: str = "simme-llama"):
        import queue

        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._closed, self._closing = False, threading.Lock()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()

    def submit(self, fn) -> None:
        """Run fn() on the thread, after the calls already queued; returns at once (RuntimeError once closed)."""
        with self._closing:
            if self._closed:
                raise RuntimeError("this model was unloaded")
            self._jobs.put(fn)

    def close(self, fn=None) -> None:
        """Run fn() (the model's cleanup) after every queued call, then end the thread; later submits fail."""
        with self._closing:
            if self._closed:
                return
            self._closed = True
            if fn is not None:
                self._jobs.put(fn)
            self._jobs.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def call(self, fn):
        """fn() on the thread; its result, or its error raised here."""
        import queue

        done: queue.SimpleQueue = queue.SimpleQueue()

        def job():
            try:
                done.put((True, fn()))
            except BaseException as err:
                done.put((False, err))
        self.submit(job)
        ok, value = done.get()
        if not ok:
            raise value
        return value
