"""The reader thread: decodes new records of every open run, off the GUI thread. No Qt.

It only calls `RunCollection.poll`, which reads through `RunReader.refresh` (documented as safe
while other threads call the accessors). The window's timer never waits for it: it redraws from
whatever has been read when it ticks, so a fast writer never builds a backlog on screen.

Decoding is Python work that holds the GIL, and every Qt call of the GUI thread gives the GIL
up; a reader thread that never pauses would make each of those calls wait for the GIL. So the
thread reads in small chunks and rests between them (`duty`: the share of time it may read),
and the viewer's process lowers the interpreter's switch interval (`visualizer.__main__`).
"""

from __future__ import annotations

import threading
import time

from visualizer.model import RunCollection

__all__ = ["RunFollower"]


class RunFollower:
    """Polls `collection` in a daemon thread until `stop()`.

    Args:
        collection: the runs to follow.
        interval: seconds to wait when a poll found nothing new.
        max_records: records read per run per poll, so that no run starves the others.
        duty: the share of the time the thread may spend reading while there is a backlog.
    """

    def __init__(
        self,
        collection: RunCollection,
        *,
        interval: float = 0.05,
        max_records: int = 32,
        duty: float = 0.5,
    ) -> None:
        self.collection = collection
        self.interval = interval
        self.max_records = max_records
        self.duty = duty
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rnnx-viz-reader", daemon=True)

    def start(self) -> RunFollower:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                count = self.collection.poll(self.max_records)
            except Exception:  # noqa: BLE001 - the runs record their own errors; keep following
                count = 0
            if count == 0:
                self._stop.wait(self.interval)
            else:
                busy = time.perf_counter() - started
                self._stop.wait(busy * (1 - self.duty) / self.duty)
