"""Reward-server throughput: concurrent clients against ``genrm_jax.serve`` on loopback.

    python benchmarks/bench_serve.py [--clients 32] [--warmup 20] [--seconds 30] \\
        [--cot_votes 4] [--cot_new 32] [--methods genrm,genrm_cot]

A random ``bench_10m`` model (the subword vocabulary of bench_decode.py, GSM8K instruction)
serves GSM8K-like items: ``--questions`` questions x ``--per_question`` candidate solutions (the
questions and reference solutions of ../shared/data/gsm8k when present, with the final numbers
varied per candidate), like the groups of an RL rollout batch. For each method the server runs
twice, in a subprocess on 127.0.0.1: with dynamic batching (``--max_rows``, ``--max_wait_ms``)
and with batching off (``--max_rows 1 --max_wait_ms 0``: one item per forward). ``--clients``
threads each send one-item ``/v1/score`` requests back to back over a kept-alive connection (as a
per-sample reward function does), walking the items in order, so concurrent requests mostly share
a question. First, requests shaped like the batches the load forms (with batching off, each
item alone) compile the shapes it will meet; then the clients run for ``--warmup`` seconds, and requests
completing in the next ``--seconds`` are counted: items/s, latency p50 / p99, and the mean batch
size from the server's /metrics. Every loop is bounded in time; the servers are stopped with
SIGTERM.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_decode  # noqa: E402  (its subword vocabulary and GSM8K path)

from genrm_jax import checkpoint, config  # noqa: E402
from genrm_jax import model as model_lib  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def items(num_questions: int, per_question: int) -> list[dict]:
  """(question, solution) pairs: GSM8K questions, each reference solution with varied numbers."""
  problems = []
  if os.path.exists(bench_decode._GSM8K):  # pylint: disable=protected-access
    with open(bench_decode._GSM8K) as f:  # pylint: disable=protected-access
      for line in f:
        rec = json.loads(line)
        body, _, answer = rec["answer"].rpartition("####")
        problems.append((rec["question"], re.sub(r"<<[^>]*>>", "", body).strip(), answer.strip()))
        if len(problems) == num_questions:
          break
  while len(problems) < num_questions:
    i = len(problems)
    problems.append((f"Tom has {i + 3} apples and buys {2 * i + 5} more. How many does he have?",
                     f"He has {i + 3} + {2 * i + 5} = {3 * i + 8} apples.", str(3 * i + 8)))
  out = []
  for question, body, answer in problems:
    for j in range(per_question):
      final = answer if j % 2 == 0 else str(int(float(answer.replace(",", "") or 0)) + j)
      out.append({"question": question, "solution": f"{body}\nThe answer is {final}"})
  return out


class Server:
  def __init__(self, model_dir: str, extra: list[str]):
    cmd = [sys.executable, "-m", "genrm_jax.serve", "--model", model_dir, "--port", "0", *extra]
    env = {**os.environ, "PYTHONPATH": ROOT}
    self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True)
    line = self.proc.stdout.readline()
    if "ready on http://" not in line:
      raise RuntimeError(f"server did not start ({self.proc.wait()}): {line!r}")
    self.host, self.port = line.rsplit("/", 1)[1].strip().rsplit(":", 1)

  def call(self, method: str, path: str, body: dict | None = None) -> bytes:
    conn = http.client.HTTPConnection(self.host, int(self.port), timeout=900)
    conn.request(method, path, None if body is None else json.dumps(body))
    response = conn.getresponse()
    payload = response.read()
    if response.status != 200:
      raise RuntimeError(f"{path}: {response.status} {payload[:200]!r}")
    return payload

  def metrics(self) -> dict[str, float]:
    text = self.call("GET", "/metrics").decode()
    return {l.split(" ")[0]: float(l.split(" ")[1]) for l in text.splitlines()
            if l and not l.startswith("#")}

  def compile_shapes(self, work: list[dict], batch: int) -> float:
    """Requests shaped like the batches the load forms, so that it meets no new shape.

    1, 2, 4, ... items up to ``batch`` (partial batches), then every run of ``batch`` consecutive
    items the clients' walk produces (full batches; their question groups and lengths differ).
    """
    start = time.monotonic()
    requests = [work[:1 << i] for i in range(batch.bit_length()) if 1 << i < batch]
    requests += [work[i:i + batch] for i in range(0, len(work), batch)]
    for items in requests:
      self.call("POST", "/v1/score", {"items": items})
    return time.monotonic() - start

  def stop(self) -> int:
    self.proc.send_signal(signal.SIGTERM)
    return self.proc.wait(120)


def load(server: Server, work: list[dict], clients: int, warmup: float, seconds: float) -> dict:
  """Runs ``clients`` threads; returns items/s, latencies and mean batch of the measured window."""
  start = time.monotonic()
  begin, end = start + warmup, start + warmup + seconds
  latencies: list[list[float]] = [[] for _ in range(clients)]
  errors: list[str] = []
  marks = {}

  def client(c: int) -> None:
    conn = http.client.HTTPConnection(server.host, int(server.port), timeout=600)
    step = 0
    while time.monotonic() < end:
      item = work[(step * clients + c) % len(work)]
      body = json.dumps({"items": [item]})
      t0 = time.monotonic()
      conn.request("POST", "/v1/score", body, {"Content-Type": "application/json"})
      response = conn.getresponse()
      payload = response.read()
      t1 = time.monotonic()
      if response.status != 200:
        errors.append(f"{response.status}: {payload[:200]!r}")
        return
      if begin <= t1 <= end:
        latencies[c].append(t1 - t0)
      step += 1

  def mark(name: str, at: float) -> None:
    time.sleep(max(0.0, at - time.monotonic()))
    marks[name] = server.metrics()

  threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
  threads += [threading.Thread(target=mark, args=("begin", begin)),
              threading.Thread(target=mark, args=("end", end))]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  if errors:
    raise RuntimeError(f"{len(errors)} failed requests, e.g. {errors[0]}")
  lat = np.array([x for per in latencies for x in per])
  delta = {k: marks["end"][k] - marks["begin"].get(k, 0.0) for k in marks["end"]}
  batches = delta.get("genrm_batch_items_count", 0.0)
  return {"items_per_s": len(lat) / seconds, "p50": float(np.percentile(lat, 50)),
          "p99": float(np.percentile(lat, 99)), "requests": len(lat),
          "mean_batch": delta.get("genrm_batch_items_sum", 0.0) / max(batches, 1.0)}


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--clients", type=int, default=32)
  ap.add_argument("--warmup", type=float, default=20.0)
  ap.add_argument("--seconds", type=float, default=30.0)
  ap.add_argument("--questions", type=int, default=8)
  ap.add_argument("--per_question", type=int, default=16)
  ap.add_argument("--methods", default="genrm,genrm_cot")
  ap.add_argument("--max_rows", type=int, default=64)
  ap.add_argument("--max_wait_ms", type=float, default=20.0)
  ap.add_argument("--cot_votes", type=int, default=4)
  ap.add_argument("--cot_new", type=int, default=32)
  args = ap.parse_args()
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs, "
        f"load average {open('/proc/loadavg').read().split()[:3]}")
  work = items(args.questions, args.per_question)
  with tempfile.TemporaryDirectory() as tmp:
    vocab = bench_decode.subword_vocab(tmp, config.bench_10m().vocab_size)
    cfg = config.bench_10m(vocab_size=vocab.vocab_size)
    model_dir = checkpoint.save_model_dir(os.path.join(tmp, "model"), cfg,
                                          model_lib.init_params(cfg, jax.random.key(0)),
                                          tokenizer_path=vocab.path)
    lengths = [len(vocab.encode(w["question"] + w["solution"])) for w in work]
    print(f"bench_10m ({model_lib.count_params(cfg) / 1e6:.2f}M params), {len(work)} items "
          f"({args.questions} questions x {args.per_question}), question + solution "
          f"{np.mean(lengths):.0f} tokens on average plus the GSM8K instruction; "
          f"{args.clients} clients, one item a request, {args.warmup:.0f} s warm-up, "
          f"{args.seconds:.0f} s measured")
    cot_gin = ["--gin_bindings", "ScoringConfig.rationale = @SamplerConfig()",
               "--gin_bindings", f"SamplerConfig.max_new_tokens = {args.cot_new}",
               "--gin_bindings", "SamplerConfig.temperature = 0.7"]
    print(f"{'method':<22} | {'batching':<28} | {'items/s':>8} | {'p50 s':>6} | {'p99 s':>6} | "
          f"{'mean batch':>10}")
    for method in args.methods.split(","):
      extra = ["--method", method, "--task", "gsm8k"]
      label, votes = method, 1
      if method == "genrm_cot":
        votes = args.cot_votes
        extra += ["--votes", str(args.cot_votes), *cot_gin]
        label += f" K={args.cot_votes} x {args.cot_new}"
      rates = {}
      for mode, flags in (("dynamic", ["--max_rows", str(args.max_rows), "--max_wait_ms",
                                       str(args.max_wait_ms)]),
                          ("off", ["--max_rows", "1", "--max_wait_ms", "0"])):
        server = Server(model_dir, extra + flags)
        try:
          per_batch = max(1, min(args.clients, args.max_rows // votes))
          compile_s = server.compile_shapes(work, per_batch if mode == "dynamic" else 1)
          r = load(server, work, args.clients, args.warmup, args.seconds)
        finally:
          code = server.stop()
        if code != 0:
          raise RuntimeError(f"server exited {code}")
        rates[mode] = r["items_per_s"]
        desc = (f"dynamic (rows {args.max_rows}, {args.max_wait_ms:g} ms)" if mode == "dynamic"
                else "off (one item a forward)")
        print(f"{label:<22} | {desc:<28} | {r['items_per_s']:>8.1f} | {r['p50']:>6.3f} | "
              f"{r['p99']:>6.3f} | {r['mean_batch']:>10.1f}   (compiling {compile_s:.0f} s)",
              flush=True)
      print(f"  -> dynamic batching: {rates['dynamic'] / rates['off']:.2f}x the items/s of "
            f"one-at-a-time ({method})", flush=True)
  print(f"load average after: {open('/proc/loadavg').read().split()[:3]}")


if __name__ == "__main__":
  main()
