"""Dynamic batching: concurrent requests gathered into one forward pass.

Each :class:`DynamicBatcher` owns ``workers`` threads (one by default). Requests submit lists of items; the
batcher waits at most ``max_wait_ms`` after the first waiting request for others to join, up
to ``max_batch_size`` items, then runs ``fn`` once on all of them in the worker thread and
hands each request its own results. The same idea as the dynamic batchers of Triton and
TorchServe (batch size cap + queue delay); the loop here is ours.

A request larger than ``max_batch_size`` runs alone (``fn`` may split it further). When ``fn``
fails on a gathered batch, each request of it is run again alone, so one bad request fails only
itself.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence


@dataclass
class _Pending:
    items: list
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


class DynamicBatcher:
    """Gather items of concurrent :meth:`submit` calls into batched calls of ``fn``.

    Args:
        fn: ``fn(items: list) -> list`` with one result per item, in order; runs in this
            batcher's worker threads (at most ``workers`` calls at once; with one worker never
            two at once).
        max_batch_size: most items per call of ``fn`` (>= 1). With 1, every request runs
            alone (batching off).
        max_wait_ms: how long (milliseconds, >= 0) the first waiting request waits for
            others to join before its batch runs.
        name: for the worker thread's name.
        on_batch: called with the number of items of every call of ``fn`` (metrics).
        workers: threads running ``fn``; while they are all busy, waiting requests gather into
            the next batch.

    Raises:
        ValueError: ``max_batch_size`` < 1, ``max_wait_ms`` < 0 or ``workers`` < 1.
    """

    def __init__(
        self,
        fn: Callable[[list], list],
        max_batch_size: int,
        max_wait_ms: float,
        name: str = "batcher",
        on_batch: Callable[[int], None] | None = None,
        workers: int = 1,
    ):
        if max_batch_size < 1 or max_wait_ms < 0 or workers < 1:
            raise ValueError(f"max_batch_size and workers must be >= 1 and max_wait_ms >= 0, got {max_batch_size}, {workers}, {max_wait_ms}")
        self.fn, self.max_batch_size, self.max_wait = fn, max_batch_size, max_wait_ms / 1000.0
        self.on_batch, self.workers = on_batch, workers
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"deltatune-{name}")
        self._free: asyncio.Semaphore | None = None
        self._running: set[asyncio.Task] = set()
        self._queue: asyncio.Queue[_Pending] | None = None
        self._worker: asyncio.Task | None = None

    async def submit(self, items: Sequence[Any]) -> list:
        """Results of ``fn`` for ``items``, computed together with other waiting requests.

        Raises:
            Exception: whatever ``fn`` raised for these items (run alone).
        """
        if not items:
            return []
        loop = asyncio.get_running_loop()
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._worker = loop.create_task(self._run())
        pending = _Pending(list(items), loop.create_future())
        await self._queue.put(pending)
        return await pending.future

    async def _gather(self) -> list[_Pending]:
        """The next batch: the first waiting request, then others until full or the wait is over."""
        assert self._queue is not None
        first = await self._queue.get()
        batch, size = [first], len(first.items)
        if self.max_batch_size == 1:
            return batch
        deadline = first.queued_at + self.max_wait
        while size < self.max_batch_size:
            try:
                nxt = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                try:
                    nxt = await asyncio.wait_for(self._queue.get(), left)
                except asyncio.TimeoutError:
                    break
            if size + len(nxt.items) > self.max_batch_size:
                self._queue.put_nowait(nxt)  # goes first in the next batch (order among waiters kept loosely)
                break
            batch.append(nxt)
            size += len(nxt.items)
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        self._free = asyncio.Semaphore(self.workers)
        while True:
            await self._free.acquire()  # a worker is free: gather the next batch for it
            batch = await self._gather()
            task = loop.create_task(self._execute(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _execute(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        try:
            items = [x for p in batch for x in p.items]
            try:
                results = await loop.run_in_executor(self._executor, self._call, items)
            except Exception as e:  # noqa: BLE001 - handed to the requests below
                if len(batch) == 1:
                    _settle(batch[0].future, error=e)
                    return
                for p in batch:  # alone, so that only the faulty request fails
                    try:
                        _settle(p.future, await loop.run_in_executor(self._executor, self._call, p.items))
                    except Exception as e2:  # noqa: BLE001
                        _settle(p.future, error=e2)
                return
            start = 0
            for p in batch:
                _settle(p.future, results[start : start + len(p.items)])
                start += len(p.items)
        finally:
            assert self._free is not None
            self._free.release()

    def _call(self, items: list) -> list:
        if self.on_batch is not None:
            self.on_batch(len(items))
        results = self.fn(items)
        if len(results) != len(items):
            raise RuntimeError(f"batched function returned {len(results)} results for {len(items)} items")
        return results

    def close(self) -> None:
        """Stop the worker (pending requests are cancelled) and its thread."""
        if self._worker is not None:
            self._worker.cancel()
        for task in list(self._running):
            task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)


def _settle(future: asyncio.Future, result: Any = None, error: BaseException | None = None) -> None:
    if future.done():  # the request was cancelled (client went away)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
