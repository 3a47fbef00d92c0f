"""The server's HTTP layer over a stand-in scorer: faults (500), a full queue (503), the client.

The real model and process are in test_server.py; here a scorer that fails or blocks on demand
makes the fault paths deterministic.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pytest
import uvicorn

from genrm_jax.serve import client as client_lib
from genrm_jax.serve import server as server_lib


class StandIn:
  """Scores len(solution); raises on "boom"; waits at ``gate`` while it is clear."""
  methods = ("genrm", "genrm_cot")
  votes = 2
  max_seq_len = 100
  specials = ("<eos>",)
  info = {"model": "stand-in"}

  def __init__(self):
    self.gate = threading.Event()
    self.gate.set()
    self.calls = 0

  def needed(self, method, question, solution):
    return len(question) + len(solution)

  def score(self, kind, items):
    self.calls += 1
    self.gate.wait(30)
    if any(s == "boom" for _, s in items):
      raise RuntimeError("device fault")
    return [{"score": float(len(s)), "p_yes": 0.5, "p_no": 0.25} for _, s in items], 1


@pytest.fixture(scope="module")
def app_server():
  scorer = StandIn()
  sc = server_lib.ServeConfig(model="stand-in", port=0, max_rows=4, max_wait_ms=20,
                              max_queue_items=6, max_items=4, max_body_bytes=2000)
  server = uvicorn.Server(uvicorn.Config(server_lib.build_app(scorer, sc, None),
                                         host="127.0.0.1", port=0, log_level="warning",
                                         lifespan="on", loop="asyncio"))
  thread = threading.Thread(target=server.run, daemon=True)
  thread.start()
  while not server.started:
    time.sleep(0.01)
  url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
  yield url, scorer
  server.should_exit = True
  thread.join(10)


def _post(url, path, body, raw=None):
  data = raw if raw is not None else json.dumps(body).encode()
  req = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
  try:
    with urllib.request.urlopen(req, timeout=30) as r:
      return r.status, json.loads(r.read()), r.headers
  except urllib.error.HTTPError as e:
    return e.code, json.loads(e.read()), e.headers


def _items(*solutions):
  return {"items": [{"question": "q", "solution": s} for s in solutions]}


def test_a_failing_batch_answers_500_and_the_server_goes_on(app_server):
  url, _ = app_server
  got = {}
  threads = [threading.Thread(target=lambda k=k, b=b: got.__setitem__(k, _post(url, "/v1/score", b)))
             for k, b in (("bad", _items("boom", "ab")), ("neighbour", _items("abc")))]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  status, body, _ = got["bad"]
  assert status == 500 and "RuntimeError: device fault" in body["error"]
  # The neighbour shared the failing batch (20 ms window) or ran alone: never a wrong answer.
  assert got["neighbour"][0] in (200, 500)
  if got["neighbour"][0] == 200:
    assert got["neighbour"][1]["results"][0]["score"] == 3.0
  status, body, _ = _post(url, "/v1/score", _items("abcd", "x"))
  assert status == 200 and [r["score"] for r in body["results"]] == [4.0, 1.0]


def test_full_queue_503_with_retry_after_then_the_client_retries(app_server):
  url, scorer = app_server
  scorer.gate.clear()
  answers = []
  # 4 items are being scored (blocked), 4 more wait; the queue holds 6: 4 more do not fit.
  blocked = [threading.Thread(target=lambda: answers.append(_post(url, "/v1/score",
                                                                  _items("a", "b", "c", "d"))))
             for _ in range(2)]
  for t in blocked:
    t.start()
    time.sleep(0.3)
  status, body, headers = _post(url, "/v1/score", _items("e", "f", "g", "h"))
  assert status == 503 and "queue" in body["error"] and int(headers["Retry-After"]) >= 1
  # The client retries after Retry-After; release the scorer meanwhile.
  threading.Timer(0.5, scorer.gate.set).start()
  client = client_lib.RewardClient(url, retries=5)
  assert [r["score"] for r in client.score([("q", "xy"), ("q", "xyz")])] == [2.0, 3.0]
  for t in blocked:
    t.join()
  assert [a[0] for a in answers] == [200, 200]
  text = urllib.request.urlopen(url + "/metrics").read().decode()
  assert "genrm_queue_rejected_total 1.0" in text
  assert 'genrm_requests_total{code="503",endpoint="/v1/score"}' in text


def test_body_and_item_limits_413_and_client_errors(app_server):
  url, _ = app_server
  status, body, _ = _post(url, "/v1/score", None, raw=b'{"items": "' + b"x" * 3000 + b'"}')
  assert status == 413 and body["error"].startswith("body: 3013 bytes, over the limit of 2000")
  status, body, _ = _post(url, "/v1/score", _items(*"abcde"))
  assert status == 413 and body["error"].startswith("items: 5 entries, over the limit of 4")
  client = client_lib.RewardClient(url, retries=0)
  with pytest.raises(client_lib.RewardServerError, match="400.*items\\[0\\]: needs 101"):
    client.score([("q", "x" * 100)])
  # The client splits a long list into requests the server accepts, keeping the order.
  assert [r["score"] for r in client.score([("q", "x" * n) for n in range(1, 10)], chunk=4)] == [
      float(n) for n in range(1, 10)]
  reward = client.get_reward(["Q: q\nA: Let's think step by step.\nabc<eos>"])
  assert reward["rewards"] == [3.0] and reward["extra_logs"]["p_yes"] == [0.5]


def test_verl_and_openrlhf_reward_functions(app_server, monkeypatch):
  url, _ = app_server
  monkeypatch.setenv(client_lib.URL_ENV, url)
  monkeypatch.setattr(client_lib, "_CLIENT", [])
  assert client_lib.compute_score("gsm8k", "abcd", "4", {"question": "q"}) == 4.0
  assert client_lib.compute_score_batch(["gsm8k"] * 2, ["a", "abc"], ["1", "2"],
                                           [{"question": "q"}] * 2) == [1.0, 3.0]
  out = client_lib.reward_func(["Q: q\nA: Let's think step by step.\nab"],
                                  ["Q: q\nA: Let's think step by step.\n"], ["2"])
  assert out["rewards"].tolist() == [2.0] and out["extra_logs"]["p_no"].tolist() == [0.25]
  with pytest.raises(ValueError, match=r"extra_infos\[1\]: the GenRM reward needs the question"):
    client_lib.compute_score_batch(["d"] * 2, ["a", "b"], [None] * 2, [{"question": "q"}, {}])


def test_bind_and_settings_checks(tmp_path):
  assert server_lib.is_loopback("127.0.0.1") and server_lib.is_loopback("::1")
  assert server_lib.is_loopback("localhost") and server_lib.is_loopback("127.8.0.1")
  assert not server_lib.is_loopback("0.0.0.0") and not server_lib.is_loopback("::")
  assert not server_lib.is_loopback("10.0.0.2") and not server_lib.is_loopback("my-host")
  with pytest.raises(ValueError, match="not a loopback address"):
    server_lib.read_token(server_lib.ServeConfig(model="m", host="my-host"))
  (tmp_path / "t").write_text(" \n")
  with pytest.raises(ValueError, match="expected one token"):
    server_lib.read_token(server_lib.ServeConfig(model="m", host="0.0.0.0",
                                                 token_file=str(tmp_path / "t")))
  (tmp_path / "t").write_text("abc\n")
  assert server_lib.read_token(server_lib.ServeConfig(model="m", host="0.0.0.0",
                                                        token_file=str(tmp_path / "t"))) == "abc"
  with pytest.raises(ValueError, match="could never be queued"):
    server_lib.ServeConfig(model="m", max_items=10, max_queue_items=5)
  with pytest.raises(ValueError, match="--method 'judge'"):
    server_lib.ServeConfig(model="m", method="judge")
