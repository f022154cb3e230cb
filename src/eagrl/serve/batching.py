"""Dynamic request batching: concurrent requests are decoded together, one batch at a time.

Written here because KServe's Python SDK batches only through its separate batcher sidecar (Go, in the
cluster) and the transformers backend has no request queue of its own. A :class:`Batcher` takes items from
many coroutines, waits up to ``max_wait_ms`` after the first one for up to ``max_batch_size`` of them, runs
``fn(items) -> results`` in the model's single worker thread (the model is not thread-safe; batchers of
different routes share that thread) and hands each caller its own result or exception. ``max_batch_size=1``
is one-request-at-a-time serving, the baseline of ``benchmarks/bench_serve.py``.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class _Item:
    payload: Any
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher:
    def __init__(self, fn: Callable[[Sequence[Any]], Sequence[Any]], executor: concurrent.futures.Executor, *,
                 max_batch_size: int = 8, max_wait_ms: float = 10.0, name: str = "batch"):
        self.fn, self.executor, self.name = fn, executor, name
        self.max_batch_size, self.max_wait = max_batch_size, max_wait_ms / 1000.0
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task | None = None
        self.batches = 0
        self.items = 0

    async def submit(self, payload: Any, timeout: float | None = None) -> Any:
        """The result of ``fn`` for this payload (its exception re-raised); TimeoutError after ``timeout`` s."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._queue = asyncio.Queue()
            self._task = loop.create_task(self._run())
        item = _Item(payload, loop.create_future())
        self._queue.put_nowait(item)
        try:
            return await asyncio.wait_for(asyncio.shield(item.future), timeout)
        except asyncio.TimeoutError:
            item.future.cancel()  # skipped if its batch has not started yet
            raise

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            batch = [first]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch_size:
                left = deadline - loop.time()
                try:
                    batch.append(self._queue.get_nowait() if left <= 0 else
                                 await asyncio.wait_for(self._queue.get(), left))
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
            live = [it for it in batch if not it.future.done()]
            if not live:
                continue
            self.batches += 1
            self.items += len(live)
            try:
                results = await loop.run_in_executor(self.executor, self.fn, [it.payload for it in live])
            except Exception as exc:  # noqa: BLE001 - every waiting caller gets the failure
                log.warning("%s: a batch of %d failed: %s", self.name, len(live), type(exc).__name__)
                for it in live:
                    if not it.future.done():
                        it.future.set_exception(exc)
                continue
            for it, res in zip(live, results):
                if it.future.done():
                    continue
                if isinstance(res, Exception):
                    it.future.set_exception(res)
                else:
                    it.future.set_result(res)
