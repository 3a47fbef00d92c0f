"""The reward server as a real process on a loopback port, against genrm_jax.eval's scores.

One tiny random model directory (a char vocabulary, a disc head) serves three processes started
together: A (genrm + genrm_cot), B (disc, bearer token, a 4 x 1 x 2 mesh) and C (dpo; the SIGTERM
test stops it). ``genrm_jax.eval`` scores the same candidates in this process meanwhile; its
scores.jsonl is the reference. All tests of this module run on one xdist worker (one set of
servers).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import pathlib
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import gin
import jax
import numpy as np
import pytest

from genrm_jax import candidates as cands
from genrm_jax import checkpoint, config, formats, model, objectives, word_puzzles
from genrm_jax import eval as eval_cli
from genrm_jax import task_rules
from genrm_jax import vocab as vocab_lib

pytestmark = pytest.mark.xdist_group("serve")

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOKEN = "s3cret-token"
# The CoT rationale sampler of both eval and the servers: short, so the tests stay fast.
GIN = ["ScoringConfig.rationale = @SamplerConfig()", "SamplerConfig.max_new_tokens = 6"]
SERVER_A = ["--method", "genrm", "--votes", "2", "--max_items", "16", "--max_body_bytes", "20000"]
SERVER_C = ["--method", "dpo", "--max_wait_ms", "1500"]


class Server:
  """``python -m genrm_jax.serve --port 0 ...`` in a subprocess; ``url`` once it is ready."""

  def __init__(self, model_dir: str, log: pathlib.Path, *args: str):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    cmd = [sys.executable, "-m", "genrm_jax.serve", "--model", model_dir, "--port", "0",
           "--task", "last_letters", *sum((["--gin_bindings", b] for b in GIN), []), *args]
    self.log = log
    self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                 stderr=open(log, "w"), text=True)
    self.lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [self.lines.put(l) for l in self.proc.stdout],
                     daemon=True).start()
    self.url = ""

  def wait_ready(self, timeout: float = 300) -> "Server":
    deadline = time.monotonic() + timeout
    while not self.url:
      try:
        line = self.lines.get(timeout=1)
      except queue.Empty:
        if self.proc.poll() is not None or time.monotonic() > deadline:
          raise RuntimeError(f"server did not start: {self.log.read_text()[-3000:]}") from None
        continue
      if "ready on " in line:
        self.url = line.split("ready on ", 1)[1].strip()
    return self

  def stop(self) -> None:
    if self.proc.poll() is None:
      self.proc.kill()
    self.proc.wait()


def call(url: str, path: str, body=None, *, raw: bytes | None = None, token: str | None = None,
         method: str | None = None):
  """(status, decoded JSON or text, headers) of one request."""
  data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
  headers = {"Content-Type": "application/json"}
  if token:
    headers["Authorization"] = f"Bearer {token}"
  req = urllib.request.Request(url + path, data=data, headers=headers, method=method)
  try:
    with urllib.request.urlopen(req, timeout=120) as r:
      status, text, got = r.status, r.read().decode(), r.headers
  except urllib.error.HTTPError as e:
    status, text, got = e.code, e.read().decode(), e.headers
  try:
    return status, json.loads(text), got
  except json.JSONDecodeError:
    return status, text, got


def _model_dir(tmp) -> tuple[str, int]:
  vocab = vocab_lib.train_char_vocab(word_puzzles.texts_for_vocab("last_letters", count=5),
                                     str(tmp / "v.model"))
  cfg = config.tiny(vocab_size=vocab.vocab_size, num_layers=1, embed_dim=32, hidden_dim=64,
                    num_heads=2, num_kv_heads=1, head_dim=16, max_seq_len=512)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda a: (rng.normal(size=a.shape) * 0.3).astype(a.dtype),
                        model.sharding.unbox(model.abstract_params(cfg)))
  head = {"w": rng.normal(size=cfg.embed_dim).astype(np.float32), "b": np.float32(0.2)}
  path = checkpoint.save_model_dir(str(tmp / "model"), cfg, params, tokenizer_path=vocab.path,
                                   extra={"disc_head": objectives.head_to_json(head)})
  return path, cfg.max_seq_len


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """(servers {A, B, C}, candidates, eval's scores {name: [score per candidate]})."""
  tmp = tmp_path_factory.mktemp("serve")
  model_dir, _ = _model_dir(tmp)
  (tmp / "token").write_text(TOKEN + "\n")
  servers = {"A": Server(model_dir, tmp / "a.log", *SERVER_A),
             "B": Server(model_dir, tmp / "b.log", "--method", "disc", "--token_file",
                         str(tmp / "token"), "--mesh=-1,1,2"),
             "C": Server(model_dir, tmp / "c.log", *SERVER_C)}
  try:
    recs = word_puzzles.candidates("last_letters", "test", problems_per_length=3,
                                  samples_per_problem=4, seed=1)
    for r in recs:
      r["extracted_answer"] = task_rules.get_task("last_letters").extract(r["solution"])
      del r["rationale"]
    pools = cands.write_candidates(str(tmp / "c.jsonl"), recs, require_gold=True)
    flat = [c for p in pools for c in p.candidates]
    eval_cli.main(["--task", "last_letters", "--candidates", str(tmp / "c.jsonl"),
                   "--out", str(tmp / "eval"), "--verifier", f"gen={model_dir}:direct",
                   "--verifier", f"cot={model_dir}:cot", "--cot_votes", "2",
                   "--verifier", f"disc={model_dir}:discriminative",
                   "--verifier", f"dpo={model_dir}:dpo",
                   *sum((["--gin_bindings", b] for b in GIN), [])])
    gin.clear_config()
    saved = {(r["question_id"], r["candidate_id"]): r["scores"]
             for r in map(json.loads, open(tmp / "eval" / "scores.jsonl"))}
    reference = {name: np.array([saved[c["question_id"], c["candidate_id"]][name] for c in flat])
                 for name in ("gen", "cot", "disc", "dpo")}
    for s in servers.values():
      s.wait_ready()
    yield servers, flat, reference
  finally:
    for s in servers.values():
      s.stop()


def _items(cands_, order=None):
  order = range(len(cands_)) if order is None else order
  return [{"question": cands_[i]["question"], "solution": cands_[i]["solution"]} for i in order]


def _query(c):
  return formats.question_prompt(c["question"], "") + c["solution"]


def test_direct_scores_equal_eval_on_both_endpoints(setup):
  servers, flat, ref = setup
  url = servers["A"].url
  status, body, _ = call(url, "/v1/score", {"items": _items(flat)})
  assert status == 200 and body["method"] == "genrm" and len(body["results"]) == len(flat)
  got = np.array([r["score"] for r in body["results"]])
  np.testing.assert_allclose(got, ref["gen"], rtol=1e-5)
  assert all(r["p_yes"] == r["score"] and 0 < r["p_no"] < 1 for r in body["results"])
  # OpenRLHF: query = prompt + response, with prompts; then without, with BOS/EOS pieces as text.
  status, body, _ = call(url, "/get_reward", {
      "query": [_query(c) for c in flat], "labels": [c["gold_answer"] for c in flat],
      "prompts": [formats.question_prompt(c["question"], "") for c in flat]})
  assert status == 200
  np.testing.assert_allclose(body["rewards"], ref["gen"], rtol=1e-5)
  assert body["scores"] == body["rewards"] and body["extra_logs"]["p_yes"] == body["rewards"]
  status, body, _ = call(url, "/get_reward", {"query": [f"<s>{_query(c)}</s>" for c in flat]})
  assert status == 200
  np.testing.assert_allclose(body["rewards"], ref["gen"], rtol=1e-5)


def test_cot_scores_equal_eval_and_do_not_depend_on_batching(setup):
  servers, flat, ref = setup
  url = servers["A"].url
  request = {"items": _items(flat), "method": "genrm_cot", "return_rationales": True}
  status, body, _ = call(url, "/v1/score", request)
  assert status == 200 and body["votes"] == 2
  np.testing.assert_allclose([r["score"] for r in body["results"]], ref["cot"], rtol=1e-5)
  for r in body["results"]:
    assert len(r["rationales"]) == 2
    assert r["score"] == pytest.approx(np.mean([x["p_yes"] for x in r["rationales"]]), rel=1e-6)
    assert all(x["text"].endswith(formats.VERDICT_QUESTION) for x in r["rationales"])
  again = call(url, "/v1/score", request)[1]
  assert again == body  # the same seed, the same rationales and scores
  # Reversed, each item sits in another row of the batch: its rationales are its own still.
  # (The shapes stay those of the first request: no new compilation.)
  order = list(range(len(flat)))[::-1]
  status, reverse, _ = call(url, "/v1/score", {**request, "items": _items(flat, order)})
  reverse = [reverse["results"][order.index(i)] for i in range(len(flat))]
  texts = lambda results: [[x["text"] for x in r["rationales"]] for r in results]  # noqa: E731
  assert texts(reverse) == texts(body["results"])
  np.testing.assert_allclose([r["score"] for r in reverse], ref["cot"], rtol=1e-5)
  # A request may ask for another K (8 x 3 rows: the same decode shape as 12 x 2).
  status, body, _ = call(url, "/v1/score", {"items": _items(flat[:8]), "method": "genrm_cot",
                                            "votes": 3, "return_rationales": True})
  assert status == 200 and body["votes"] == 3
  assert [len(r["rationales"]) for r in body["results"]] == [3] * 8


def test_64_concurrent_requests_all_answered_in_their_order(setup):
  servers, flat, ref = setup
  url = servers["A"].url
  rng = np.random.default_rng(5)
  requests = []
  for i in range(64):
    order = rng.permutation(len(flat))[:1 + i % 5].tolist()
    requests.append((order, {"items": _items(flat, order)}))
  with concurrent.futures.ThreadPoolExecutor(64) as pool:
    answers = list(pool.map(lambda r: call(url, "/v1/score", r[1]), requests))
  for (order, _), (status, body, _) in zip(requests, answers):
    assert status == 200, body
    np.testing.assert_allclose([r["score"] for r in body["results"]], ref["gen"][order],
                               rtol=1e-5)
  text = call(url, "/metrics")[1]
  values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
            if line and not line.startswith("#")}
  # Requests were merged: some batch held items of several requests.
  assert values["genrm_batch_items_sum"] > values["genrm_batch_items_count"]
  assert values['genrm_requests_total{code="200",endpoint="/v1/score"}'] >= 64
  assert values["genrm_tokens_total"] > 0


def _bad_cases(flat, max_seq_len=512):
  good = {"question": flat[0]["question"], "solution": flat[0]["solution"]}
  prompt = formats.question_prompt(flat[0]["question"], "")
  return [
      ("/v1/score", b'{"items": [', 400, "body: not valid JSON"),
      ("/v1/score", b'"items"', 400, "body: expected a JSON object, got str"),
      ("/v1/score", {"items": []}, 400, "items: empty list"),
      ("/v1/score", {"itemz": [good]}, 400, "itemz: unknown field"),
      ("/v1/score", {"items": [good, {"question": "q"}]}, 400, r"items\[1\]\.solution: missing"),
      ("/v1/score", {"items": [good, {"question": "q", "solution": 7}]}, 400,
       r"items\[1\]\.solution: expected a string, got int"),
      ("/v1/score", {"items": [good], "method": "disc"}, 400, "method: 'disc' is not served"),
      ("/v1/score", {"items": [good], "method": "genrm_cot", "votes": 0}, 400,
       r"votes: 0 is outside 1\.\.64"),
      ("/v1/score", {"items": [good, {"question": "q", "solution": "x" * max_seq_len}]}, 400,
       r"items\[1\]: needs \d+ positions with method genrm, over the model's context of 512"),
      ("/v1/score", {"items": [good] * 17}, 413, "items: 17 entries, over the limit of 16"),
      ("/v1/score", {"items": [{"question": "q", "solution": "x" * 30000}]}, 413,
       r"body: 300\d\d bytes, over the limit of 20000"),
      ("/get_reward", {"query": []}, 400, "query: empty list"),
      ("/get_reward", {"query": [prompt + "s"], "prompts": [prompt, prompt]}, 400,
       "prompts: 2 entries for 1 queries"),
      ("/get_reward", {"query": [prompt + "s", "zzz"], "prompts": [prompt, prompt]}, 400,
       r"query\[1\]: does not contain prompts\[1\]"),
      ("/get_reward", {"query": ["just text"]}, 400, r"query\[0\]: no GenRM question prompt"),
      ("/get_reward", {"query": [prompt + "y" * max_seq_len]}, 400,
       r"query\[0\]: needs \d+ positions"),
  ]


def test_every_bad_input_gets_its_status_and_the_server_goes_on(setup):
  servers, flat, ref = setup
  url = servers["A"].url
  for path, body, status, message in _bad_cases(flat):
    raw = body if isinstance(body, bytes) else None
    got_status, got, _ = call(url, path, None if raw else body, raw=raw)
    assert got_status == status and re.match(message, got["error"]), (message, got)
  assert call(url, "/v1/score", method="GET")[0] == 405
  assert call(url, "/nowhere")[0] == 404
  status, body, _ = call(url, "/v1/score", {"items": _items(flat, [3])})
  assert status == 200
  np.testing.assert_allclose(body["results"][0]["score"], ref["gen"][3], rtol=1e-5)
  status, health, _ = call(url, "/health")
  assert status == 200 and health["methods"] == ["genrm", "genrm_cot"]
  assert health["queue_depth"] == 0 and health["max_seq_len"] == 512


def test_disc_with_token_on_a_mesh(setup):
  servers, flat, ref = setup
  url = servers["B"].url
  for path in ("/health", "/metrics", "/v1/score"):
    for token in (None, "wrong"):
      status, body, headers = call(url, path, {"items": _items(flat)} if path == "/v1/score"
                                   else None, token=token)
      assert status == 401 and headers["WWW-Authenticate"] == "Bearer", (path, token, body)
  status, health, _ = call(url, "/health", token=TOKEN)
  assert status == 200 and health["mesh"] == {"data": 4, "fsdp": 1, "tensor": 2}
  assert len(health["devices"]) == 8
  status, body, _ = call(url, "/v1/score", {"items": _items(flat)}, token=TOKEN)
  assert status == 200
  np.testing.assert_allclose([r["score"] for r in body["results"]], ref["disc"], rtol=1e-5,
                             atol=1e-6)
  assert all(r["p_yes"] is None for r in body["results"])
  status, body, _ = call(url, "/get_reward", {"query": [_query(c) for c in flat]}, token=TOKEN)
  assert status == 200 and body["extra_logs"] == {}
  np.testing.assert_allclose(body["rewards"], ref["disc"], rtol=1e-5, atol=1e-6)
  metrics = call(url, "/metrics", token=TOKEN)[1]
  assert 'genrm_requests_total{code="401",endpoint="/v1/score"} 2.0' in metrics


def test_non_loopback_bind_refuses_to_start_without_a_token(tmp_path):
  out = subprocess.run([sys.executable, "-m", "genrm_jax.serve", "--model", str(tmp_path),
                        "--method", "genrm", "--host", "0.0.0.0"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
  assert out.returncode == 2
  assert "--host 0.0.0.0 is not a loopback address: refusing to serve it without --token_file" \
      in out.stderr


def test_sigterm_finishes_in_flight_requests_and_exits_0(setup):
  servers, flat, ref = setup
  server = servers["C"]
  parts = [list(range(i, len(flat), 4)) for i in range(4)]
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    answers = [pool.submit(call, server.url, "/v1/score", {"items": _items(flat, p)})
               for p in parts]
    time.sleep(0.5)  # received and queued: the batch waits up to 1.5 s to fill
    server.proc.send_signal(signal.SIGTERM)
    results = [a.result() for a in answers]
  assert server.proc.wait(60) == 0
  for part, (status, body, _) in zip(parts, results):
    assert status == 200
    np.testing.assert_allclose([r["score"] for r in body["results"]], ref["dpo"][part],
                               rtol=1e-5)
  with pytest.raises(urllib.error.URLError):
    urllib.request.urlopen(server.url + "/health", timeout=5)
  assert "Shutting down" in server.log.read_text()
