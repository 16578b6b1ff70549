"""Dynamic batching: concurrent requests gathered for a few milliseconds, up to a token budget, and
scored together by one scorer on one worker thread (ONNX Runtime uses every core for one batch).

A request waits at most ``max_wait`` seconds for company; a batch closes early once its traces hold
``max_batch_tokens`` (estimated from their characters; 0 turns batching off: one request a batch).
At most ``max_queue`` requests wait: one more is refused (503) instead of piling up. The scorer's
own length bucketing and prefix cache work across the requests of a batch and between batches.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..traces import Record

CHARS_PER_TOKEN = 3  # a cheap token estimate for the budget (the scorer counts exactly)


class Overloaded(Exception):
    """The queue is full."""


@dataclass
class _Job:
    records: list[Record]
    future: asyncio.Future
    tokens: int = field(init=False)

    def __post_init__(self):
        self.tokens = sum(len(r.trace.text) // CHARS_PER_TOKEN + 1 for r in self.records if r.trace is not None)


class Batcher:
    def __init__(self, scorer, max_batch_tokens: int, max_wait: float, max_queue: int, on_batch=None):
        self.scorer = scorer
        self.max_batch_tokens, self.max_wait, self.max_queue = max_batch_tokens, max_wait, max_queue
        self.on_batch = on_batch or (lambda traces: None)
        self.waiting = 0
        self._queue: asyncio.Queue | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rfedge-score")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """After the queue drained (uvicorn waits for requests in flight before it stops the app)."""
        if self._task is not None:
            self._task.cancel()
        self._executor.shutdown(wait=True)

    async def submit(self, records: list[Record]) -> list:
        """Results (a ScoreResult, or the TraceFormatError naming the record), in order."""
        if self.waiting >= self.max_queue:
            raise Overloaded
        job = _Job(records, asyncio.get_running_loop().create_future())
        self.waiting += 1
        await self._queue.put(job)
        return await job.future

    async def _gather(self) -> list[_Job]:
        jobs = [await self._queue.get()]
        tokens, loop = jobs[0].tokens, asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while self.max_batch_tokens and tokens < self.max_batch_tokens:
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                job = await asyncio.wait_for(self._queue.get(), left)
            except asyncio.TimeoutError:
                break
            jobs.append(job)
            tokens += job.tokens
        return jobs

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._gather()
            self.waiting -= len(jobs)
            records = [r for job in jobs for r in job.records]
            self.on_batch(records)
            try:
                results = await loop.run_in_executor(self._executor, self._score, records)
            except Exception as e:  # a failure of the runtime itself: every request of the batch gets it
                for job in jobs:
                    if not job.future.done():  # a client that went away cancelled its future
                        job.future.set_exception(e)
                continue
            start = 0
            for job in jobs:
                if not job.future.done():
                    job.future.set_result(results[start:start + len(job.records)])
                start += len(job.records)

    def _score(self, records: list[Record]) -> list:
        return [result for _, result in self.scorer.score_records(records)]
