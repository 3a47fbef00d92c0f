"""Dynamic batching for the reward server: a bounded queue of items feeding one scoring thread.

Requests put their items on one queue, bounded in items: a request that does not fit is refused
(``QueueFull``, answered 503), so memory never grows with load. One asyncio task forms batches:
it takes the kind (method, votes) of the oldest waiting item, waits until ``max_wait_s`` after
that item arrived for more of that kind, then takes up to ``max_rows`` rows of them in arrival
order, from any number of requests (a CoT item is K rows; a batch holds at least one item). The
batch is scored on the one scoring thread, the only thread that runs JAX, while the event loop
goes on accepting requests; what arrives meanwhile forms the next batch without further waiting.
Items of one question in a batch share their prefix cache (``genrm_jax.scoring`` groups them).
Each request gets its results back in its own order. A batch whose scoring raises fails exactly
the requests with items in it (``BatchFailed``); their other waiting items are dropped, and
batching goes on.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import logging
import math
import time
from typing import Any, Callable, Sequence

from genrm_jax.serve.metrics import Metrics

log = logging.getLogger("genrm_jax.serve")


class QueueFull(Exception):
  """The queue cannot take a request's items now; ``retry_after`` is a guess in seconds."""

  def __init__(self, retry_after: int, depth: int):
    super().__init__(f"the queue holds {depth} items and cannot take this request now")
    self.retry_after = retry_after


class BatchFailed(Exception):
  """Scoring a batch holding some of a request's items raised."""


@dataclasses.dataclass(frozen=True)
class Kind:
  """What a batch must agree on: the method, and K (rows per item; 1 without rationales)."""
  method: str
  votes: int


# (kind, [(question, solution)]) -> (one result dict per item, tokens scored); runs on the
# scoring thread.
ScoreFn = Callable[[Kind, Sequence[tuple[str, str]]], tuple[list[dict], int]]


class _Job:
  """One request's items in the queue."""

  def __init__(self, kind: Kind, size: int, future: asyncio.Future):
    self.kind = kind
    self.future = future
    self.results: list[Any] = [None] * size
    self.remaining = size
    self.arrived = time.monotonic()


@dataclasses.dataclass
class _Entry:
  job: _Job
  index: int
  item: tuple[str, str]


class Batcher:
  """Batches concurrent requests' items for ``score_fn`` (see the module docstring)."""

  def __init__(self, score_fn: ScoreFn, *, max_rows: int, max_wait_s: float,
               max_queue_items: int, metrics: Metrics):
    if max_rows < 1 or max_queue_items < 1 or max_wait_s < 0:
      raise ValueError(f"Batcher: max_rows={max_rows} and max_queue_items={max_queue_items} "
                       f"must be >= 1, max_wait_s={max_wait_s} >= 0")
    self.score_fn = score_fn
    self.max_rows = max_rows
    self.max_wait_s = max_wait_s
    self.max_queue_items = max_queue_items
    self.metrics = metrics
    self._pending: collections.deque[_Entry] = collections.deque()
    self._counts: collections.Counter[Kind] = collections.Counter()
    self._arrived = asyncio.Event()
    self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="genrm-score")
    self._task: asyncio.Task | None = None
    self._batch_seconds = 0.0  # of the last batch, for Retry-After
    self._busy = False  # a batch is being scored

  @property
  def depth(self) -> int:
    """Items waiting (not counting the batch being scored)."""
    return len(self._pending)

  def start(self) -> None:
    self._task = asyncio.get_running_loop().create_task(self._loop(), name="genrm-batcher")

  async def stop(self) -> None:
    """Finishes what is queued and being scored, then stops the loop and the scoring thread."""
    while self._pending or self._busy:
      await asyncio.sleep(0.01)
    if self._task is not None:
      self._task.cancel()
      await asyncio.gather(self._task, return_exceptions=True)
    self._executor.shutdown(wait=True)

  async def submit(self, kind: Kind, items: Sequence[tuple[str, str]]) -> list[dict]:
    """Scores ``items``; raises QueueFull at once when they do not fit, BatchFailed on failure."""
    if len(self._pending) + len(items) > self.max_queue_items:
      self.metrics.rejected.inc()
      raise QueueFull(self._retry_after(), len(self._pending))
    job = _Job(kind, len(items), asyncio.get_running_loop().create_future())
    self._pending.extend(_Entry(job, i, item) for i, item in enumerate(items))
    self._counts[kind] += len(items)
    self.metrics.queue_depth.set(len(self._pending))
    self._arrived.set()
    try:
      return await job.future
    except asyncio.CancelledError:  # the client or the server gave up: drop what still waits
      self._drop(job)
      raise

  def _retry_after(self) -> int:
    batches = math.ceil(len(self._pending) / self.max_rows) + 1
    return max(1, math.ceil(batches * self._batch_seconds))

  def _drop(self, job: _Job) -> None:
    kept = collections.deque(e for e in self._pending if e.job is not job)
    self._counts[job.kind] -= len(self._pending) - len(kept)
    self._pending = kept
    self.metrics.queue_depth.set(len(kept))

  async def _loop(self) -> None:
    while True:
      kind = await self._wait_for_batch()
      batch = self._take(kind)
      self._busy = True
      try:
        await self._run(kind, batch)
      except Exception:  # pylint: disable=broad-except
        log.exception("batcher: unexpected failure; failing the batch's requests")
        self._fail({e.job for e in batch}, "internal error while batching")
      finally:
        self._busy = False

  async def _wait_for_batch(self) -> Kind:
    """The kind of the next batch, once it is full or its oldest item has waited max_wait_s."""
    while not self._pending:
      self._arrived.clear()
      await self._arrived.wait()
    first = self._pending[0].job
    kind = first.kind
    while self._counts[kind] * kind.votes < self.max_rows:
      left = first.arrived + self.max_wait_s - time.monotonic()
      if left <= 0:
        break
      self._arrived.clear()
      try:
        await asyncio.wait_for(self._arrived.wait(), left)
      except asyncio.TimeoutError:
        break
      if not self._pending or self._pending[0].job is not first:  # it was cancelled
        return await self._wait_for_batch()
    return kind

  def _take(self, kind: Kind) -> list[_Entry]:
    taken, kept, rows = [], collections.deque(), 0
    for e in self._pending:
      if e.job.kind == kind and (not taken or rows + kind.votes <= self.max_rows):
        taken.append(e)
        rows += kind.votes
      else:
        kept.append(e)
    self._pending = kept
    self._counts[kind] -= len(taken)
    self.metrics.queue_depth.set(len(kept))
    return taken

  async def _run(self, kind: Kind, batch: list[_Entry]) -> None:
    start = time.monotonic()
    for e in batch:
      self.metrics.queue_wait.observe(start - e.job.arrived)
    items = [e.item for e in batch]
    try:
      results, tokens = await asyncio.get_running_loop().run_in_executor(
          self._executor, self.score_fn, kind, items)
      if len(results) != len(items):
        raise RuntimeError(f"{len(results)} results for {len(items)} items")
    except Exception as err:  # pylint: disable=broad-except
      log.exception("scoring a batch of %d %s items failed", len(items), kind.method)
      self.metrics.batch_failures.inc()
      self._fail({e.job for e in batch}, f"scoring failed: {type(err).__name__}: {err}")
      return
    seconds = time.monotonic() - start
    self._batch_seconds = seconds
    self.metrics.items.labels(kind.method).inc(len(items))
    self.metrics.tokens.inc(tokens)
    self.metrics.batch_items.observe(len(items))
    self.metrics.batch_rows.observe(len(items) * kind.votes)
    self.metrics.batch_seconds.observe(seconds)
    self.metrics.batch_tokens_per_second.set(tokens / max(seconds, 1e-9))
    for e, result in zip(batch, results):
      job = e.job
      if job.future.done():
        continue
      job.results[e.index] = result
      job.remaining -= 1
      if not job.remaining:
        job.future.set_result(job.results)

  def _fail(self, jobs, message: str) -> None:
    for job in jobs:
      self._drop(job)
      if not job.future.done():
        job.future.set_exception(BatchFailed(message))
