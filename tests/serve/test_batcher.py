"""The dynamic batcher with a stand-in scorer: merging, order, kinds, bounds, failures, one thread."""

from __future__ import annotations

import asyncio
import threading

import pytest

from genrm_jax.serve.batcher import Batcher, BatchFailed, Kind, QueueFull
from genrm_jax.serve.metrics import Metrics

DIRECT, COT = Kind("genrm", 1), Kind("genrm_cot", 2)


class StandIn:
  """Scores an item as len(solution); records each batch and the thread it ran on."""

  def __init__(self, gate: threading.Event | None = None):
    self.batches: list[tuple[Kind, list]] = []
    self.threads: set[int] = set()
    self.gate = gate

  def __call__(self, kind, items):
    if self.gate is not None:
      self.gate.wait(10)
    self.threads.add(threading.get_ident())
    self.batches.append((kind, list(items)))
    if any(s == "boom" for _, s in items):
      raise RuntimeError("device fault")
    return [{"score": float(len(s)), "kind": kind.method} for _, s in items], 7 * len(items)


def _items(tag: str, n: int):
  return [(f"q{tag}", "x" * (i + 1) + tag) for i in range(n)]


def _run(coro):
  return asyncio.run(coro)


def test_concurrent_requests_merge_into_batches_and_keep_their_order():
  scorer = StandIn()

  async def go():
    b = Batcher(scorer, max_rows=8, max_wait_s=0.05, max_queue_items=100, metrics=Metrics())
    b.start()
    sizes = [3, 1, 5, 2, 4, 6]
    got = await asyncio.gather(*(b.submit(DIRECT, _items(str(i), n))
                                 for i, n in enumerate(sizes)))
    await b.stop()
    return sizes, got, b

  sizes, got, b = _run(go())
  for i, (n, results) in enumerate(zip(sizes, got)):
    assert [r["score"] for r in results] == [float(len(s)) for _, s in _items(str(i), n)]
  assert all(len(items) <= 8 for _, items in scorer.batches)
  assert sum(len(items) for _, items in scorer.batches) == sum(sizes)
  assert len(scorer.batches) == 3  # 21 items, 8 rows a batch
  # The first batch holds the first request's items, then the next ones', in arrival order.
  assert scorer.batches[0][1] == _items("0", 3) + _items("1", 1) + _items("2", 4)[:4]
  assert len(scorer.threads) == 1  # the scorer (JAX) runs on one thread only
  text = b.metrics.render().decode()
  assert "genrm_items_total{method=\"genrm\"} 21.0" in text
  assert "genrm_tokens_total 147.0" in text and "genrm_batch_items_count 3.0" in text


def test_batches_hold_one_kind_and_count_cot_rows():
  scorer = StandIn()

  async def go():
    b = Batcher(scorer, max_rows=4, max_wait_s=0.05, max_queue_items=100, metrics=Metrics())
    b.start()
    got = await asyncio.gather(b.submit(COT, _items("a", 3)), b.submit(DIRECT, _items("b", 2)),
                               b.submit(COT, _items("c", 1)))
    await b.stop()
    return got

  got = _run(go())
  assert [r["kind"] for r in got[0]] == ["genrm_cot"] * 3 and got[1][0]["kind"] == "genrm"
  for kind, items in scorer.batches:
    assert len({kind}) == 1 and len(items) * kind.votes <= 4
  assert [(k.method, len(items)) for k, items in scorer.batches] == [
      ("genrm_cot", 2), ("genrm_cot", 2), ("genrm", 2)]


def test_one_item_batches_when_batching_is_off():
  scorer = StandIn()

  async def go():
    b = Batcher(scorer, max_rows=1, max_wait_s=0, max_queue_items=100, metrics=Metrics())
    b.start()
    await asyncio.gather(b.submit(COT, _items("a", 2)), b.submit(DIRECT, _items("b", 3)))
    await b.stop()

  _run(go())
  assert [len(items) for _, items in scorer.batches] == [1] * 5  # a CoT item alone is 2 rows


def test_a_failing_batch_fails_its_requests_only():
  scorer = StandIn()

  async def go():
    b = Batcher(scorer, max_rows=4, max_wait_s=0.05, max_queue_items=100, metrics=Metrics())
    b.start()
    bad = [("q", "boom"), ("q", "x")]
    # 2 + 2 items share the failing batch; the third request's 6 items start the next ones.
    got = await asyncio.gather(b.submit(DIRECT, bad), b.submit(DIRECT, _items("n", 2)),
                               b.submit(DIRECT, _items("m", 6)), return_exceptions=True)
    after = await b.submit(DIRECT, _items("z", 1))
    await b.stop()
    return got, after, b

  (bad, neighbour, later), after, b = _run(go())
  assert isinstance(bad, BatchFailed) and "RuntimeError: device fault" in str(bad)
  assert isinstance(neighbour, BatchFailed)
  assert [r["score"] for r in later] == [float(len(s)) for _, s in _items("m", 6)]
  assert after[0]["score"] == 2.0
  assert "genrm_batch_failures_total 1.0" in b.metrics.render().decode()


def test_full_queue_refuses_with_retry_after_and_cancelled_items_are_dropped():
  gate = threading.Event()
  scorer = StandIn(gate)

  async def go():
    b = Batcher(scorer, max_rows=2, max_wait_s=0, max_queue_items=4, metrics=Metrics())
    b.start()
    first = asyncio.create_task(b.submit(DIRECT, _items("a", 2)))
    await asyncio.sleep(0.05)  # taken into the (blocked) first batch
    waiting = asyncio.create_task(b.submit(DIRECT, _items("b", 3)))
    await asyncio.sleep(0.01)
    with pytest.raises(QueueFull) as full:
      await b.submit(DIRECT, _items("c", 2))
    assert full.value.retry_after >= 1 and b.depth == 3
    waiting.cancel()
    await asyncio.sleep(0.01)
    assert b.depth == 0  # the cancelled request's items left the queue
    fits = asyncio.create_task(b.submit(DIRECT, _items("c", 2)))
    gate.set()
    got = await asyncio.gather(first, fits)
    await b.stop()
    return got

  first, fits = _run(go())
  assert len(first) == len(fits) == 2
  assert all(not any(s.endswith("b") for _, s in items) for _, items in scorer.batches)


def test_stop_finishes_queued_work_and_the_batch_in_flight():
  gate = threading.Event()
  scorer = StandIn(gate)

  async def go():
    b = Batcher(scorer, max_rows=2, max_wait_s=0.2, max_queue_items=10, metrics=Metrics())
    b.start()
    queued = asyncio.create_task(b.submit(DIRECT, _items("a", 3)))
    await asyncio.sleep(0)
    stopping = asyncio.create_task(b.stop())
    await asyncio.sleep(0.3)  # the first batch (2 items) waits at the gate, 1 item queued
    assert b.depth == 1 and not stopping.done()
    gate.set()
    await stopping
    return await queued

  assert len(_run(go())) == 3


def test_bad_settings():
  with pytest.raises(ValueError, match="max_rows=0"):
    Batcher(StandIn(), max_rows=0, max_wait_s=0, max_queue_items=1, metrics=Metrics())
