"""Candidates JSONL: round trip, validation errors that name file and line, released pools."""

from __future__ import annotations

import json

import pytest

from genrm_jax import candidates as cands


def _rec(qid, i, answer="4", correct=True, **kw):
  return dict(question_id=qid, question=f"q{qid}?", solution=f"s{i} The answer is {answer}.",
              extracted_answer=answer, correct=correct, **kw)


def _write_lines(path, lines):
  path.write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines))
  return str(path)


def test_round_trip_groups_pools_in_order(tmp_path):
  recs = [_rec(2, 0), _rec(1, 0, "3", False, extra=[1]), _rec(2, 1, None, False), _rec(1, 1)]
  out = str(tmp_path / "sub" / "c.jsonl")
  cands.write_candidates(out, recs)
  pools = cands.read_candidates(out)
  assert [p.question_id for p in pools] == [2, 1]
  assert [len(p) for p in pools] == [2, 2]
  assert pools[0].answers == ["4", None]
  assert pools[1].correct.tolist() == [False, True]
  assert pools[1].candidates[0]["extra"] == [1]
  assert [c["candidate_id"] for c in pools[0].candidates] == [0, 1]
  assert not [p for p in (tmp_path / "sub").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("lines,match", [
    (["{not json"], r"c\.jsonl:1: malformed JSON"),
    ([_rec(1, 0), "[1, 2]"], r"c\.jsonl:2: expected a JSON object"),
    ([{k: v for k, v in _rec(1, 0).items() if k != "solution"}], r":1: missing field\(s\) \['solution'\]"),
    ([_rec(1, 0, correct="yes")], r":1: correct must be true or false"),
    ([_rec(1, 0, answer=4)], r":1: extracted_answer must be a string or null"),
    ([_rec(1, 0, candidate_id=7), _rec(1, 1, candidate_id=7)],
     r"c\.jsonl:2: duplicate candidate \(question_id 1, candidate_id 7\); first seen at .*c\.jsonl:1"),
    ([_rec(1, 0), dict(_rec(1, 1), question="other?")], r":2: question_id 1 has a different question"),
    ([], r"c\.jsonl: empty pool: no candidates"),
    (["", "  "], r"c\.jsonl: empty pool: no candidates"),
])
def test_bad_files_name_file_and_line(tmp_path, lines, match):
  path = _write_lines(tmp_path / "c.jsonl", lines)
  with pytest.raises(cands.CandidatesError, match=match):
    cands.read_candidates(path)


def test_gold_answers_and_checker(tmp_path):
  no_label = {k: v for k, v in _rec(1, 0).items() if k != "correct"}
  path = _write_lines(tmp_path / "c.jsonl", [_rec(3, 0, gold_answer="4"), _rec(1, 0)])
  with pytest.raises(cands.CandidatesError, match=r"c\.jsonl:2: question_id 1 has no gold_answer "
                     r"\(a gold answer is required\)"):
    cands.read_candidates(path, require_gold=True)
  assert len(cands.read_candidates(path)) == 2
  path = _write_lines(tmp_path / "d.jsonl", [no_label])
  with pytest.raises(cands.CandidatesError, match=r"d\.jsonl:1: missing field\(s\) \['correct'\]"):
    cands.read_candidates(path)
  with pytest.raises(cands.CandidatesError, match=r"d\.jsonl:1: .*no gold_answer \(`correct` is"):
    cands.read_candidates(path, checker=lambda a, g: a == g)
  path = _write_lines(tmp_path / "e.jsonl", [dict(no_label, gold_answer="4"),
                                             dict(no_label, extracted_answer="5", gold_answer="4")])
  pools = cands.read_candidates(path, checker=lambda a, g: a == g)
  assert pools[0].correct.tolist() == [True, False]


def test_write_validates_before_writing(tmp_path):
  out = tmp_path / "c.jsonl"
  with pytest.raises(cands.CandidatesError, match=r"c\.jsonl \(record 1\): duplicate candidate"):
    cands.write_candidates(str(out), [_rec(1, 0, candidate_id=0), _rec(1, 1, candidate_id=0)])
  assert not list(tmp_path.iterdir())
  with pytest.raises(cands.CandidatesError, match="empty pool"):
    cands.write_candidates(str(out), [])
