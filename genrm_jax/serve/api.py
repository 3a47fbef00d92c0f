"""The reward server's wire formats: parsing and checking requests, building responses.

Pure functions over decoded JSON (no HTTP, no JAX); ``genrm_jax.serve.server`` wires them to
FastAPI. Every rejected request raises ``ApiError`` with a status and the field (and index) at
fault.

``POST /v1/score``::

    {"items": [{"question": str, "solution": str}, ...],
     "method": "genrm" | "genrm_cot" | ...,   # optional: one of the server's methods
     "votes": int,                            # optional, CoT only: K rationales per item
     "return_rationales": bool}               # optional, CoT only
    -> {"method", "votes", "results": [{"score", "p_yes", "p_no"[, "rationales": [{"text",
        "p_yes"}]]}]}

``POST /get_reward`` (OpenRLHF's remote reward model)::

    {"query": [str], "prompts": [str], "labels": [...]}   # prompts, labels optional
    -> {"rewards": [float], "scores": [float], "extra_logs": {"p_yes": [...], "p_no": [...]}}

How a query becomes a (question, solution) pair. The policy's prompt must be a GenRM question
prompt, ``formats.question_prompt(question, instruction)``: any preamble (e.g. an instruction),
then a line ``Q: <question>``, ending with ``A: Let's think step by step.`` (and usually a
newline). The question is the text from the first line that starts with ``Q: `` up to that final
line; the preamble is dropped, since the verifier rebuilds the prompt with its own instruction.
The solution is the query after the prompt (OpenRLHF's query is prompt + response), with leading
newlines removed. Without ``prompts``, the prompt is the query up to the end of its first ``A:
Let's think step by step.`` line after ``Q: ``. The vocabulary's special pieces written out as
text (e.g. ``<bos>``, ``<eos>``, ``<pad>``) are stripped from both ends of queries and prompts
first. ``labels`` are checked for length and otherwise ignored (GenRM needs no reference).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Callable, Sequence

from genrm_jax import formats, scoring

_THINK_LINE = formats.THINK.rstrip("\n")  # "A: Let's think step by step."


class ApiError(Exception):
  """A request the server refuses: HTTP ``status``, and a message naming the field at fault."""

  def __init__(self, status: int, field: str, message: str):
    super().__init__(f"{field}: {message}")
    self.status = status


@dataclasses.dataclass(frozen=True)
class Limits:
  """What a request may ask for (``methods[0]`` is the default method)."""
  methods: tuple[str, ...]
  votes: int  # default K for CoT
  max_votes: int
  max_items: int


@dataclasses.dataclass(frozen=True)
class Request:
  """A parsed request: items (question, solution), each with the field name errors refer to."""
  method: str
  votes: int  # rows per item: K for CoT, else 1
  items: tuple[tuple[str, str], ...]
  fields: tuple[str, ...]  # e.g. "items[3]" or "query[3]"
  return_rationales: bool = False


def _type(value: Any) -> str:
  return "null" if value is None else type(value).__name__


def parse_json(body: bytes) -> Any:
  try:
    return json.loads(body)
  except UnicodeDecodeError as e:
    raise ApiError(400, "body", f"not UTF-8 ({e.reason} at byte {e.start})") from None
  except json.JSONDecodeError as e:
    raise ApiError(400, "body", f"not valid JSON (line {e.lineno} column {e.colno}: {e.msg})"
                   ) from None


def _text(value: Any, field: str) -> str:
  if not isinstance(value, str):
    raise ApiError(400, field, f"expected a string, got {_type(value)}")
  try:
    value.encode("utf-8")
  except UnicodeEncodeError:
    raise ApiError(400, field, "not valid Unicode (a lone surrogate)") from None
  return value


def _list(body: dict, name: str, limits: Limits, required: bool = True) -> list | None:
  value = body.get(name)
  if value is None:  # an optional field may also be sent as null
    if required:
      raise ApiError(400, name, "missing")
    return None
  if not isinstance(value, list):
    raise ApiError(400, name, f"expected a list, got {_type(value)}")
  if not value:
    raise ApiError(400, name, "empty list")
  if len(value) > limits.max_items:
    raise ApiError(413, name, f"{len(value)} entries, over the limit of {limits.max_items} a "
                   "request")
  return value


def _object(body: Any) -> dict:
  if not isinstance(body, dict):
    raise ApiError(400, "body", f"expected a JSON object, got {_type(body)}")
  return body


def _method_and_votes(body: dict, limits: Limits) -> tuple[str, int]:
  method = body.get("method", limits.methods[0])
  if not isinstance(method, str) or method not in limits.methods:
    raise ApiError(400, "method", f"{method!r} is not served here; this server serves "
                   f"{', '.join(limits.methods)}")
  if not scoring.method(method).votes:
    return method, 1  # votes mean nothing without rationales
  votes = body.get("votes", limits.votes)
  if isinstance(votes, bool) or not isinstance(votes, int):
    raise ApiError(400, "votes", f"expected an integer, got {_type(votes)}")
  if not 1 <= votes <= limits.max_votes:
    raise ApiError(400, "votes", f"{votes} is outside 1..{limits.max_votes}")
  return method, votes


def parse_score(body: Any, limits: Limits) -> Request:
  """A ``/v1/score`` request."""
  body = _object(body)
  unknown = sorted(set(body) - {"items", "method", "votes", "return_rationales"})
  if unknown:
    raise ApiError(400, unknown[0], "unknown field (expected items, method, votes, "
                   "return_rationales)")
  items = _list(body, "items", limits)
  method, votes = _method_and_votes(body, limits)
  rationales = body.get("return_rationales", False)
  if not isinstance(rationales, bool):
    raise ApiError(400, "return_rationales", f"expected true or false, got {_type(rationales)}")
  pairs = []
  for i, item in enumerate(items):
    where = f"items[{i}]"
    if not isinstance(item, dict):
      raise ApiError(400, where, f"expected an object with question and solution, got "
                     f"{_type(item)}")
    for key in ("question", "solution"):
      if key not in item:
        raise ApiError(400, f"{where}.{key}", "missing")
    pairs.append((_text(item["question"], f"{where}.question"),
                   _text(item["solution"], f"{where}.solution")))
  return Request(method, votes, tuple(pairs), tuple(f"items[{i}]" for i in range(len(pairs))),
                 rationales)


def _strip_specials(text: str, specials: Sequence[str]) -> str:
  """``text`` without the special pieces (repeated, in any order) at either end."""
  while True:
    before = text
    for piece in specials:
      text = text[len(piece):] if text.startswith(piece) else text
      text = text[:-len(piece)] if text.endswith(piece) else text
    if text == before:
      return text


def _question_start(text: str) -> int:
  """Where the first line starting with "Q: " begins (-1 if none)."""
  if text.startswith("Q: "):
    return 0
  at = text.find("\nQ: ")
  return at + 1 if at >= 0 else -1


def question_from_prompt(prompt: str, field: str) -> str:
  """The question of a GenRM question prompt (see the module docstring)."""
  body = prompt.rstrip()
  start = _question_start(body)
  if start < 0 or not body.endswith("\n" + _THINK_LINE) or len(body) < start + 3 + len(
      _THINK_LINE) + 1:
    raise ApiError(400, field, "not a GenRM question prompt: expected '[instruction]Q: "
                   f"<question>\\n{_THINK_LINE}\\n' (formats.question_prompt)")
  return body[start + 3:-len(_THINK_LINE) - 1]


def split_query(query: str, prompt: str | None, specials: Sequence[str], index: int
                ) -> tuple[str, str]:
  """(question, solution) of one OpenRLHF query (and its prompt, when given)."""
  query = _strip_specials(query, specials)
  if prompt is None:
    start = _question_start(query)
    end = query.find("\n" + _THINK_LINE, max(start, 0))
    if start < 0 or end < 0:
      raise ApiError(400, f"query[{index}]", "no GenRM question prompt in it ('Q: <question>"
                     f"\\n{_THINK_LINE}'), and no prompts were sent")
    prompt, field = query[:end + 1 + len(_THINK_LINE)], f"query[{index}]"
  else:
    prompt, field = _strip_specials(prompt, specials), f"prompts[{index}]"
  at = query.find(prompt)
  if at < 0:
    raise ApiError(400, f"query[{index}]", f"does not contain prompts[{index}]")
  question = question_from_prompt(prompt, field)
  return question, query[at + len(prompt):].lstrip("\n")


def parse_get_reward(body: Any, limits: Limits, specials: Sequence[str]) -> Request:
  """A ``/get_reward`` request, served with the default method (other fields are ignored)."""
  body = _object(body)
  queries = _list(body, "query", limits)
  prompts = _list(body, "prompts", limits, required=False)
  labels = _list(body, "labels", limits, required=False)
  for name, values in (("prompts", prompts), ("labels", labels)):
    if values is not None and len(values) != len(queries):
      raise ApiError(400, name, f"{len(values)} entries for {len(queries)} queries")
  pairs = []
  for i, q in enumerate(queries):
    prompt = None if prompts is None else _text(prompts[i], f"prompts[{i}]")
    pairs.append(split_query(_text(q, f"query[{i}]"), prompt, specials, i))
  method, votes = _method_and_votes({}, limits)
  return Request(method, votes, tuple(pairs), tuple(f"query[{i}]" for i in range(len(pairs))))


def check_context(req: Request, needed: Callable[[str, str, str], int], max_seq_len: int
                  ) -> None:
  """400 for the first item whose scoring would not fit in the model's context."""
  for (question, solution), field in zip(req.items, req.fields):
    n = needed(req.method, question, solution)
    if n > max_seq_len:
      raise ApiError(400, field, f"needs {n} positions with method {req.method}, over the "
                     f"model's context of {max_seq_len} (max_seq_len)")


def _num(x: float | None) -> float | None:
  """JSON has no inf/nan: such a value (e.g. log pi(y|x) underflowing) is sent as null."""
  return None if x is None or not math.isfinite(x) else float(x)


def score_response(req: Request, results: Sequence[dict]) -> dict:
  out = []
  for r in results:
    entry = {"score": _num(r["score"]), "p_yes": _num(r["p_yes"]), "p_no": _num(r["p_no"])}
    if req.return_rationales and r.get("rationales") is not None:
      entry["rationales"] = [{"text": t, "p_yes": _num(p)}
                             for t, p in zip(r["rationales"], r["rationale_p_yes"])]
    out.append(entry)
  return {"method": req.method, "votes": req.votes, "results": out}


def reward_response(results: Sequence[dict]) -> dict:
  scores = [_num(r["score"]) for r in results]
  logs = {}
  if results and results[0]["p_yes"] is not None:
    logs = {"p_yes": [_num(r["p_yes"]) for r in results],
            "p_no": [_num(r["p_no"]) for r in results]}
  return {"rewards": scores, "scores": scores, "extra_logs": logs}
