"""The reward server's request rules: field checks, the OpenRLHF query split, responses."""

from __future__ import annotations

import math

import pytest

from genrm_jax import formats
from genrm_jax.serve import api

LIMITS = api.Limits(methods=("genrm", "genrm_cot"), votes=4, max_votes=8, max_items=3)
SPECIALS = ("<bos>", "<eos>", "<pad>")


def _error(fn, *args):
  with pytest.raises(api.ApiError) as e:
    fn(*args)
  return e.value.status, str(e.value)


def test_score_request_defaults_and_options():
  req = api.parse_score({"items": [{"question": "q", "solution": "s"}]}, LIMITS)
  assert (req.method, req.votes, req.items, req.fields) == ("genrm", 1, (("q", "s"),),
                                                            ("items[0]",))
  req = api.parse_score({"items": [{"question": "q", "solution": ""}] * 2, "method": "genrm_cot",
                         "return_rationales": True}, LIMITS)
  assert (req.method, req.votes, req.return_rationales, len(req.items)) == ("genrm_cot", 4, True,
                                                                            2)
  assert api.parse_score({"items": [{"question": "q", "solution": "s"}], "method": "genrm_cot",
                          "votes": 8}, LIMITS).votes == 8
  # votes mean nothing to a direct verifier: ignored, not an error.
  assert api.parse_score({"items": [{"question": "q", "solution": "s"}], "votes": 99},
                         LIMITS).votes == 1


@pytest.mark.parametrize("body,status,message", [
    ([], 400, "body: expected a JSON object, got list"),
    ({}, 400, "items: missing"),
    ({"items": {}}, 400, "items: expected a list, got dict"),
    ({"items": []}, 400, "items: empty list"),
    ({"items": [{"question": "q", "solution": "s"}] * 4}, 413, "items: 4 entries, over the limit"),
    ({"items": [{"question": "q", "solution": "s"}, "x"]}, 400, "items[1]: expected an object"),
    ({"items": [{"question": "q"}]}, 400, "items[0].solution: missing"),
    ({"items": [{"question": 3, "solution": "s"}]}, 400,
     "items[0].question: expected a string, got int"),
    ({"items": [{"question": "q", "solution": "\ud800"}]}, 400,
     "items[0].solution: not valid Unicode"),
    ({"items": [{"question": "q", "solution": "s"}], "method": "disc"}, 400,
     "method: 'disc' is not served here; this server serves genrm, genrm_cot"),
    ({"items": [{"question": "q", "solution": "s"}], "method": "genrm_cot", "votes": True}, 400,
     "votes: expected an integer, got bool"),
    ({"items": [{"question": "q", "solution": "s"}], "method": "genrm_cot", "votes": 9}, 400,
     "votes: 9 is outside 1..8"),
    ({"items": [{"question": "q", "solution": "s"}], "return_rationales": 1}, 400,
     "return_rationales: expected true or false, got int"),
    ({"items": [{"question": "q", "solution": "s"}], "item": []}, 400, "item: unknown field"),
])
def test_score_request_errors_name_the_field(body, status, message):
  got_status, got = _error(api.parse_score, body, LIMITS)
  assert got_status == status and got.startswith(message), got


def test_parse_json_errors():
  assert api.parse_json(b'{"a": [1]}') == {"a": [1]}
  assert _error(api.parse_json, b'{"a": ') == (
      400, "body: not valid JSON (line 1 column 7: Expecting value)")
  assert _error(api.parse_json, b"\xff")[1].startswith("body: not UTF-8")


PROMPT = formats.question_prompt("abc def", "Solve.\n")  # "Solve.\nQ: abc def\nA: Let's ..."


def test_query_split_with_and_without_prompts():
  query = PROMPT + "abc:c\nThe answer is c."
  assert api.split_query(query, PROMPT, SPECIALS, 0) == ("abc def", "abc:c\nThe answer is c.")
  # Special pieces at either end (a detokenized sequence), no prompt: cut at the THINK line.
  assert api.split_query("<bos>" + query + "<eos><pad><pad>", None, SPECIALS, 0) == (
      "abc def", "abc:c\nThe answer is c.")
  # A prompt without its final newline: the response's leading newline is not solution text.
  assert api.split_query(query, PROMPT.rstrip("\n"), SPECIALS, 0)[1] == "abc:c\nThe answer is c."
  # A question over several lines, and no instruction.
  multi = formats.question_prompt("two\nlines", "")
  assert api.split_query(multi + "x", multi, SPECIALS, 0) == ("two\nlines", "x")
  # The preamble is dropped: the verifier adds its own instruction.
  assert api.question_from_prompt("Chat preamble\nQ: q?\nA: Let's think step by step.\n",
                                  "p") == "q?"


def test_get_reward_request_and_its_errors():
  req = api.parse_get_reward({"query": [PROMPT + "s1", PROMPT + "s2"], "prompts": [PROMPT] * 2,
                              "labels": ["1", None], "extra": 1}, LIMITS, SPECIALS)
  assert req.items == (("abc def", "s1"), ("abc def", "s2")) and req.method == "genrm"
  assert api.parse_get_reward({"query": [PROMPT + "s1"], "prompts": None, "labels": None},
                              LIMITS, SPECIALS).items == (("abc def", "s1"),)
  assert req.fields == ("query[0]", "query[1]")
  cases = [
      ({"prompts": [PROMPT]}, "query: missing"),
      ({"query": [PROMPT + "s"], "prompts": [PROMPT] * 2}, "prompts: 2 entries for 1 queries"),
      ({"query": [PROMPT + "s"], "labels": []}, "labels: empty list"),
      ({"query": [PROMPT + "s", "other"], "prompts": [PROMPT] * 2},
       "query[1]: does not contain prompts[1]"),
      ({"query": ["hello world"], "prompts": ["hello"]},
       "prompts[0]: not a GenRM question prompt"),
      ({"query": ["no prompt here"]}, "query[0]: no GenRM question prompt in it"),
      ({"query": [PROMPT + "s", 5]}, "query[1]: expected a string, got int"),
  ]
  for body, message in cases:
    status, got = _error(api.parse_get_reward, body, LIMITS, SPECIALS)
    assert status == 400 and got.startswith(message), (body, got)


def test_context_check_names_the_first_item_too_long():
  req = api.parse_score({"items": [{"question": "q", "solution": "s" * n} for n in (5, 50, 60)]},
                        LIMITS)
  needed = lambda method, q, s: len(q) + len(s)  # noqa: E731
  api.check_context(req, needed, 100)
  assert _error(api.check_context, req, needed, 40) == (
      400, "items[1]: needs 51 positions with method genrm, over the model's context of 40 "
      "(max_seq_len)")


def test_responses():
  req = api.parse_score({"items": [{"question": "q", "solution": "s"}] * 2, "method": "genrm_cot",
                         "votes": 2, "return_rationales": True}, LIMITS)
  results = [{"score": 0.25, "p_yes": 0.25, "p_no": 0.5, "rationales": ["a", "b"],
              "rationale_p_yes": [0.1, 0.4]},
             {"score": 0.5, "p_yes": 0.5, "p_no": 0.5, "rationales": ["c", "d"],
              "rationale_p_yes": [0.5, 0.5]}]
  out = api.score_response(req, results)
  assert out["method"] == "genrm_cot" and out["votes"] == 2
  assert out["results"][0] == {"score": 0.25, "p_yes": 0.25, "p_no": 0.5, "rationales": [
      {"text": "a", "p_yes": 0.1}, {"text": "b", "p_yes": 0.4}]}
  reward = api.reward_response(results)
  assert reward == {"rewards": [0.25, 0.5], "scores": [0.25, 0.5],
                    "extra_logs": {"p_yes": [0.25, 0.5], "p_no": [0.5, 0.5]}}
  # Scores without probabilities (disc, dpo); a non-finite value is sent as null.
  plain = [{"score": -3.5, "p_yes": None, "p_no": None}, {"score": -math.inf, "p_yes": None,
                                                          "p_no": None}]
  assert api.reward_response(plain) == {"rewards": [-3.5, None], "scores": [-3.5, None],
                                        "extra_logs": {}}
