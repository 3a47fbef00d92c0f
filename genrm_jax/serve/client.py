"""A small synchronous client for ``genrm_jax.serve``, and verl reward functions that call it.

    client = RewardClient("http://127.0.0.1:8000", token_file="token.txt")
    client.score([("Q text", "solution text")])        # -> [{"score", "p_yes", "p_no"}, ...]
    client.get_reward(queries, prompts)                # OpenRLHF's form

A 503 (queue full) is retried after the server's Retry-After, and a refused or reset connection
(a server restarting) after an exponential backoff, up to ``retries`` times; any other error
raises ``RewardServerError`` with the server's message. Standard library only, so it runs in any
trainer's environment.

OpenRLHF: ``--remote_rm_url http://HOST:PORT/get_reward`` calls the server directly, but sends no
token; across hosts, pass this file as ``--remote_rm_url`` instead: its ``reward_func(queries,
prompts, labels)`` posts the same request with the token.

verl (``custom_reward_function.path`` = this file): ``compute_score(data_source, solution_str,
ground_truth, extra_info)`` scores one response (the reward manager ``naive``);
``compute_score_batch(data_sources, solution_strs, ground_truths, extra_infos)`` scores a whole
batch in one request (the reward manager ``batch``), which lets the server batch it. The question
is ``extra_info["question"]`` (verl's GSM8K preprocessing stores it there); ``ground_truth`` is
not used (GenRM needs no reference). The server is ``$GENRM_REWARD_URL`` (default
http://127.0.0.1:8000), its token the file ``$GENRM_REWARD_TOKEN_FILE`` (optional).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from typing import Any, Sequence

URL_ENV = "GENRM_REWARD_URL"
TOKEN_FILE_ENV = "GENRM_REWARD_TOKEN_FILE"


class RewardServerError(RuntimeError):
  """The server answered with an error status (after retries, for 503)."""

  def __init__(self, status: int, message: str):
    super().__init__(f"reward server answered {status}: {message}")
    self.status = status


class RewardClient:
  """Talks to one reward server; safe to share between threads (no state per call)."""

  def __init__(self, url: str = "http://127.0.0.1:8000", *, token: str | None = None,
               token_file: str | None = None, timeout: float = 600.0, retries: int = 8,
               backoff: float = 0.5):
    if token is None and token_file:
      with open(token_file) as f:
        token = f.read().strip()
    self.url = url.rstrip("/")
    self.headers = {"Content-Type": "application/json"}
    if token:
      self.headers["Authorization"] = f"Bearer {token}"
    self.timeout, self.retries, self.backoff = timeout, retries, backoff

  def _call(self, path: str, body: dict | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    for attempt in range(self.retries + 1):
      request = urllib.request.Request(self.url + path, data=data, headers=self.headers,
                                       method="GET" if data is None else "POST")
      try:
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
          return json.loads(response.read())
      except urllib.error.HTTPError as e:
        text = e.read().decode(errors="replace")
        try:
          message = json.loads(text).get("error", text)
        except (json.JSONDecodeError, AttributeError):
          message = text
        if e.code != 503 or attempt == self.retries:
          raise RewardServerError(e.code, message) from None
        wait = float(e.headers.get("Retry-After") or self.backoff)
      except (ConnectionError, urllib.error.URLError) as e:
        reason = getattr(e, "reason", e)
        if not isinstance(reason, ConnectionError) or attempt == self.retries:
          raise
        wait = self.backoff * 2 ** attempt
      time.sleep(wait)
    raise AssertionError("unreachable")

  def score(self, items: Sequence[tuple[str, str] | dict], *, method: str | None = None,
            votes: int | None = None, return_rationales: bool = False,
            chunk: int = 256) -> list[dict]:
    """One result per item ({"score", "p_yes", "p_no"[, "rationales"]}), in order.

    Items go ``chunk`` a request (the server refuses more than its ``--max_items``).
    """
    options: dict[str, Any] = {}
    if method is not None:
      options["method"] = method
    if votes is not None:
      options["votes"] = votes
    if return_rationales:
      options["return_rationales"] = True
    wire = [it if isinstance(it, dict) else {"question": it[0], "solution": it[1]}
            for it in items]
    out: list[dict] = []
    for start in range(0, len(wire), chunk):
      out += self._call("/v1/score", {"items": wire[start:start + chunk], **options})["results"]
    return out

  def get_reward(self, queries: Sequence[str], prompts: Sequence[str] | None = None,
                 labels: Sequence[Any] | None = None) -> dict:
    body: dict[str, Any] = {"query": list(queries)}
    if prompts is not None:
      body["prompts"] = list(prompts)
    if labels is not None:
      body["labels"] = list(labels)
    return self._call("/get_reward", body)

  def health(self) -> dict:
    return self._call("/health")


_CLIENT: list[RewardClient] = []


def _client() -> RewardClient:
  if not _CLIENT:
    _CLIENT.append(RewardClient(os.environ.get(URL_ENV, "http://127.0.0.1:8000"),
                                token_file=os.environ.get(TOKEN_FILE_ENV) or None))
  return _CLIENT[0]


def _question(extra_info: dict | None, index: int | None = None) -> str:
  where = "extra_info" if index is None else f"extra_infos[{index}]"
  if not isinstance(extra_info, dict) or not isinstance(extra_info.get("question"), str):
    raise ValueError(f"{where}: the GenRM reward needs the question as extra_info['question'] "
                     "(store it in the dataset's extra_info column)")
  return extra_info["question"]


def compute_score(data_source: str, solution_str: str, ground_truth: Any,
                  extra_info: dict | None = None) -> float:
  """verl's per-sample reward function: the verifier's score of one response."""
  del data_source, ground_truth
  return _client().score([(_question(extra_info), solution_str)])[0]["score"]


def compute_score_batch(data_sources: Sequence[str], solution_strs: Sequence[str],
                        ground_truths: Sequence[Any], extra_infos: Sequence[dict | None]
                        ) -> list[float]:
  """verl's batch reward function (``reward_model.reward_manager=batch``): one request."""
  del data_sources, ground_truths
  items = [(_question(info, i), s) for i, (s, info) in enumerate(zip(solution_strs, extra_infos))]
  return [r["score"] for r in _client().score(items)]


def reward_func(queries: Sequence[str], prompts: Sequence[str], labels: Sequence[Any],
                **unused: Any) -> dict:
  """OpenRLHF's custom reward function: ``/get_reward`` with the token, as torch tensors."""
  import torch  # pylint: disable=g-import-not-at-top  (OpenRLHF's environment has it)
  del unused
  got = _client().get_reward(queries, prompts, labels)
  tensor = lambda xs: torch.tensor([float("nan") if x is None else x for x in xs])  # noqa: E731
  return {"rewards": tensor(got["rewards"]), "scores": tensor(got["scores"]),
          "extra_logs": {k: tensor(v) for k, v in got["extra_logs"].items()}}
