"""The reward server's Prometheus metrics (``GET /metrics``, text exposition format).

One registry per server (not prometheus_client's global one), so tests can run several apps in
one process. Counters end in ``_total`` in the exposition; tokens/s is ``rate(genrm_tokens_total)``
and, for the last batch alone, ``genrm_batch_tokens_per_second``.
"""

from __future__ import annotations

import prometheus_client as prom

_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
  """Everything the server counts; ``render`` gives the text a Prometheus scraper reads."""

  def __init__(self):
    r = self.registry = prom.CollectorRegistry()
    self.requests = prom.Counter("genrm_requests", "HTTP requests answered, by endpoint and "
                                 "status code", ["endpoint", "code"], registry=r)
    self.latency = prom.Histogram("genrm_request_latency_seconds", "Time from a request's arrival "
                                  "to its answer", ["endpoint"], buckets=_SECONDS, registry=r)
    self.items = prom.Counter("genrm_items", "Items scored, by method", ["method"], registry=r)
    self.tokens = prom.Counter("genrm_tokens", "Tokens of the sequences scored (scoring."
                               "ScoreResult.tokens)", registry=r)
    self.batch_items = prom.Histogram("genrm_batch_items", "Items per scoring batch",
                                      buckets=_SIZES, registry=r)
    self.batch_rows = prom.Histogram("genrm_batch_rows", "Rows per scoring batch (a CoT item "
                                     "has K)", buckets=_SIZES, registry=r)
    self.batch_seconds = prom.Histogram("genrm_batch_seconds", "Time to score one batch",
                                        buckets=_SECONDS, registry=r)
    self.batch_tokens_per_second = prom.Gauge("genrm_batch_tokens_per_second", "Tokens per "
                                              "second of the last batch", registry=r)
    self.batch_failures = prom.Counter("genrm_batch_failures", "Batches whose scoring raised",
                                       registry=r)
    self.queue_wait = prom.Histogram("genrm_queue_wait_seconds", "Time an item waited before "
                                     "its batch started", buckets=_SECONDS, registry=r)
    self.queue_depth = prom.Gauge("genrm_queue_depth", "Items waiting to be scored", registry=r)
    self.rejected = prom.Counter("genrm_queue_rejected", "Requests refused with 503 because the "
                                 "queue was full", registry=r)

  def render(self) -> bytes:
    return prom.generate_latest(self.registry)

  content_type = prom.CONTENT_TYPE_LATEST
