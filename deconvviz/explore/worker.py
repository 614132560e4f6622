"""One worker for the model: requests wait in a short queue, stale ones are dropped, a background scan yields.

Every piece of work that runs the model (a capture, a reverse pass, a batch of the top-k scan) holds
:attr:`ModelWorker.model`, so the model runs one thing at a time. Interactive requests go through
:meth:`ModelWorker.submit`: a request from a page that carries a client id and a sequence number makes the same
page's older queued requests stale, and they are answered at once instead of run; a full queue answers at once
too. The background scan holds the model between its batches only when no request is waiting
(:meth:`ModelWorker.pause_for_requests`).
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from deconvviz.errors import DeconvVizError


class Busy(DeconvVizError):
    """The queue of model work is full: the request is refused at once (HTTP 503)."""


class Superseded(DeconvVizError):
    """A newer request from the same page made this one stale: it was dropped unrun (HTTP 429)."""


class Stopped(DeconvVizError):
    """The worker was stopped before the work ran."""


@dataclass
class _Job:
    run: Callable[[], Any]
    future: concurrent.futures.Future[Any]
    client: str | None
    seq: int


class ModelWorker:
    """A single thread that runs model work in arrival order, with a bounded queue.

    Args:
        max_pending: most requests waiting at once; one more is refused with :class:`Busy`.
    """

    def __init__(self, max_pending: int = 16) -> None:
        self.max_pending = max_pending
        self.model = threading.Lock()
        """Held while the model runs (by this worker's jobs and by the background scan's batches)."""
        self._cond = threading.Condition()
        self._pending: deque[_Job] = deque()
        self._running: _Job | None = None
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="deconvviz-explore-model", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Requests waiting to run."""
        with self._cond:
            return len(self._pending)

    def submit(self, run: Callable[[], Any], client: str | None = None, seq: int = 0) -> concurrent.futures.Future[Any]:
        """Queue ``run()``; its future gets the result or the exception.

        Args:
            run: the work.
            client: the page that asks (an id it chose); None for a request that never goes stale.
            seq: the page's sequence number: queued requests of ``client`` with a smaller one are dropped.

        Raises:
            Busy: the queue is full.
            Superseded: a newer request of the same client is already queued.
            Stopped: the worker was stopped.
        """
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._cond:
            if self._stopped:
                raise Stopped("the explorer is shutting down")
            if client is not None:
                if any(job.client == client and job.seq > seq for job in self._pending):
                    raise Superseded("a newer request from this page is queued; this one was dropped")
                stale = [job for job in self._pending if job.client == client and job.seq < seq]
                for job in stale:
                    self._pending.remove(job)
                    job.future.set_exception(Superseded("a newer request from this page came; this one was dropped"))
            if len(self._pending) >= self.max_pending:
                raise Busy(f"the model is busy ({len(self._pending)} requests waiting); try again shortly")
            self._pending.append(_Job(run, future, client, seq))
            self._cond.notify_all()
        return future

    def call(self, run: Callable[[], Any]) -> Any:
        """Run ``run()`` on the worker and wait for it (for callers on other threads)."""
        return self.submit(run).result()

    def stale(self) -> bool:
        """Whether a newer request of the page whose job runs now is waiting.

        A long job (an occlusion sweep) asks between its batches, and gives up with :class:`Superseded` rather than
        hold the page's next view back.
        """
        with self._cond:
            job = self._running
            return (
                job is not None
                and job.client is not None
                and any(waiting.client == job.client and waiting.seq > job.seq for waiting in self._pending)
            )

    def pause_for_requests(self) -> None:
        """Called by a long task that holds :attr:`model` (the scan, between batches): let waiting requests run."""
        with self._cond:
            if not self._pending and self._running is None:
                return
        self.model.release()
        try:
            with self._cond:
                while (self._pending or self._running is not None) and not self._stopped:
                    self._cond.wait(0.5)
        finally:
            self.model.acquire()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopped:
                    self._cond.wait()
                if self._stopped and not self._pending:
                    return
                job = self._pending.popleft()
                self._running = job
            try:
                if job.future.set_running_or_notify_cancel():
                    with self.model:
                        try:
                            result = job.run()
                        except BaseException as exc:  # handed to the waiting request, which answers for it
                            job.future.set_exception(exc)
                        else:
                            job.future.set_result(result)
            finally:
                with self._cond:
                    self._running = None
                    self._cond.notify_all()

    def stop(self, timeout: float = 10.0) -> None:
        """Refuse new work, drop what waits, let the running job finish (up to ``timeout`` seconds)."""
        with self._cond:
            self._stopped = True
            while self._pending:
                self._pending.popleft().future.set_exception(Stopped("the explorer is shutting down"))
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)


__all__ = ["Busy", "ModelWorker", "Stopped", "Superseded"]
