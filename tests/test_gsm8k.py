"""genrm_jax.gsm8k_release readers, build-cot, GSM8K tasks on a tiny generated data folder, and the
released data (shared_data)."""

from __future__ import annotations

import collections
import gzip
import json

import numpy as np
import pytest

import tasks  # noqa: F401
from genrm_jax import data
from genrm_jax import formats
from genrm_jax import gsm8k_release
from genrm_jax import vocab as vocab_lib
from tasks import gsm8k as gsm8k_tasks

QUESTIONS = [f"Tom has {i} apples and buys {i + 1} more. How many apples does he have?"
             for i in range(1, 13)]


def _solution(i, correct):
  total = 2 * i + 1 if correct else 2 * i + 2
  return f"He has {i} + {i + 1} = {total} apples.\nThe answer is {total}."


def _rm_record(i, correct, qid=None):
  return {"inputs": formats.direct_prompt(QUESTIONS[i - 1], _solution(i, correct)),
          "targets": formats.verdict_target(correct), "question_id": qid or i, "model_output_id": 0}


def _write(path, records, gz=None):
  path.parent.mkdir(parents=True, exist_ok=True)
  lines = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)
  if gz if gz is not None else str(path).endswith(".gz"):
    with gzip.open(path, "wt") as f:
      f.write(lines)
  else:
    path.write_text(lines)


def _rationale(ok, bold=False):
  verdict = f"{formats.VERDICT_QUESTION} {'Yes' if ok else 'No'}"
  return f"Step 1 checks out.\n{'**' + verdict + '**' if bold else verdict}\nSummary after."


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  root = tmp_path_factory.mktemp("data")
  crit = root / "genrm-critiques"
  _write(root / "gsm8k" / "train.jsonl",
         [{"question": q,
           "answer": f"{i}+{i + 1}=<<{i}+{i + 1}={2 * i + 1}>>{2 * i + 1}\n#### {2 * i + 1}"}
          for i, q in enumerate(QUESTIONS, start=1)])
  _write(crit / "rm" / "rm_a.jsonl.gz",
         [_rm_record(i, c) for i in range(1, 11) for c in (True, False)])
  _write(crit / "critiques_val" / "rm_val.jsonl",
         [_rm_record(i, c) for i in (11, 12) for c in (1, 0)])
  _write(crit / "critiques_val" / "critiques_val.jsonl",
         [{"inputs": formats.cot_prompt(QUESTIONS[i - 1], _solution(i, c)),
           "targets": formats.cot_target("Step 1 ok.", c), "question_id": i} for i in (11, 12)
          for c in (True, False)])
  coll = []
  for i in range(1, 11):
    for c in (True, False):
      for kind in ("agree", "bold", "disagree", "none"):
        out = {"agree": _rationale(c), "bold": _rationale(c, bold=True),
               "disagree": _rationale(not c), "none": "Looks fine to me."}[kind]
        coll.append({"question": QUESTIONS[i - 1], "question_id": 100 + i,
                     "model_output": _solution(i, c), "model_output_id": 0,
                     "extracted_answer": "x", "target": "y", "correctness": int(c),
                     "verifier_prompt": "p", "verifier_output": out})
  _write(crit / "data_collection" / "critique_gen_round_0.jsonl.gz", coll)
  return root


@pytest.fixture(scope="module")
def vocab(tmp_path_factory, root):
  texts = [formats.GSM8K_INSTRUCTION, *QUESTIONS, _rationale(True), _solution(3, True)]
  return vocab_lib.train_char_vocab(texts, str(tmp_path_factory.mktemp("v") / "char.model"))


def test_read_rm_and_val(root):
  rm = gsm8k_release.read_rm(str(root / "genrm-critiques"))
  assert len(rm) == 20 and sum(c["correct"] for c in rm) == 10
  assert rm[1]["question"] == QUESTIONS[0] and rm[1]["solution"] == _solution(1, False)
  assert rm[0]["where"].endswith("rm_a.jsonl.gz:1")
  cot = gsm8k_release.read_val(str(root / "genrm-critiques"), cot=True)
  assert [c["correct"] for c in cot] == [True, False, True, False]


@pytest.mark.parametrize("line,match", [
    ("{not json", "malformed|Expecting"),
    (json.dumps({"inputs": "x", "question_id": 1}), r"missing field\(s\) \['targets'\]"),
    (json.dumps({**_rm_record(1, True), "inputs": formats.direct_prompt(QUESTIONS[0], "  ")}),
     "non-empty solution"),
    (json.dumps({**_rm_record(1, True), "targets": "Yes"}), "target must be"),
    (json.dumps({**_rm_record(1, True), "targets": ""}), "'targets' is missing, empty"),
])
def test_bad_records_name_file_and_line(tmp_path, line, match):
  path = tmp_path / "rm" / "rm_bad.jsonl"
  _write(path, [_rm_record(1, True), line, _rm_record(2, False)])
  with pytest.raises(gsm8k_release.BadRecord, match=match) as e:
    gsm8k_release.read_rm(str(tmp_path))
  assert "rm_bad.jsonl:2" in str(e.value)
  stats = gsm8k_release.ReadStats()
  assert len(gsm8k_release.read_rm(str(tmp_path), skip_bad=True, stats=stats)) == 2
  assert stats.skipped == 1 and stats.read >= 2


def test_truncated_gzip(tmp_path):
  path = tmp_path / "rm" / "rm_x.jsonl.gz"
  _write(path, [_rm_record(i % 10 + 1, True) for i in range(200)])
  raw = path.read_bytes()
  path.write_bytes(raw[:len(raw) // 2])
  with pytest.raises(gsm8k_release.BadRecord, match="truncated gzip"):
    gsm8k_release.read_rm(str(tmp_path), skip_bad=True)


def test_build_cot_command(root, tmp_path, capsys):
  out = tmp_path / "cot.jsonl"
  folder = str(root / "genrm-critiques" / "data_collection")
  assert gsm8k_release.main(["build-cot", "--data_collection", folder, "--out", str(out)]) == 0
  printed = capsys.readouterr().out
  assert "kept 40, dropped 20" in printed and "unparseable 20" in printed
  recs = [json.loads(l) for l in out.read_text().splitlines()]
  assert len(recs) == 40
  for r in recs:
    assert "**" not in r["rationale"] and "Summary" not in r["rationale"]
    assert r["rationale"].endswith(formats.VERDICT_QUESTION + formats.verdict_target(r["correct"]))


def test_heldout_split_is_by_question(root):
  cands = gsm8k_release.read_rm(str(root / "genrm-critiques"))
  always = frozenset({gsm8k_release.question_key(QUESTIONS[0])})
  train = gsm8k_release.split_by_question(cands, "train", 0.3, always)
  val = gsm8k_release.split_by_question(cands, "validation", 0.3, always)
  assert len(train) + len(val) == len(cands) and val
  assert not {c["question"] for c in train} & {c["question"] for c in val}
  assert QUESTIONS[0] in {c["question"] for c in val}


def test_gsm8k_tasks_on_a_data_folder(root, vocab):
  gsm8k_tasks.register_gsm8k(data_dir=str(root), heldout_fraction=0.2)
  try:
    for name, kind in [("gsm8k_genrm", "lm"), ("gsm8k_genrm_cot", "lm"), ("gsm8k_verify", "lm"),
                       ("gsm8k_discriminative", "disc"), ("gsm8k_dpo_pairs", "dpo")]:
      for split in ("train", "validation"):
        b = next(data.get_batches(name, split, batch_size=2, seq_len=1024, objective=kind,
                                  vocab=vocab))
        key = {"lm": "inputs", "disc": "inputs", "dpo": "chosen_inputs"}[kind]
        assert b[key].shape == (2, 1024)
    seen = {}
    for split in ("train", "validation"):
      it = data.get_batches("gsm8k_verify", split, batch_size=2, seq_len=1024, vocab=vocab,
                            repeat=False)
      seen[split] = {q for b in it for i in range(2) for q in QUESTIONS
                     if f"Q: {q}\n" in vocab.decode(b["inputs"][i])}
    assert seen["train"] and not seen["train"] & seen["validation"]
    assert {QUESTIONS[10], QUESTIONS[11]} <= seen["validation"]  # the paper's validation questions
  finally:
    gsm8k_tasks.register_gsm8k()


def test_gsm8k_verifier_data_are_balanced_per_question(tmp_path, vocab):
  mix = {1: (3, 1), 2: (2, 0), 3: (1, 2)}  # question: (correct, wrong) released solutions
  crit = tmp_path / "genrm-critiques"
  _write(crit / "rm" / "rm_a.jsonl", [_rm_record(i, c) for i, (good, bad) in mix.items()
                                      for c in [True] * good + [False] * bad])
  _write(crit / "critiques_val" / "rm_val.jsonl", [_rm_record(11, True), _rm_record(11, False)])

  def per_question(name, kind):
    got = collections.Counter()
    for b in data.get_batches(name, "train", batch_size=1, seq_len=1024, objective=kind,
                              vocab=vocab, repeat=False, pack=False):
      if not b["segment_ids"].any():
        continue
      text = vocab.decode(b["inputs"][0])
      q = next(i for i, q in enumerate(QUESTIONS, start=1) if f"Q: {q}\n" in text)
      got[q, bool(b["labels"][0][b["score_weights"][0] > 0][0]) if kind == "disc" else True] += 1
    return got

  try:
    gsm8k_tasks.register_gsm8k(data_dir=str(tmp_path), heldout_fraction=0.0)
    # Question 2 has no wrong solution: it gives no verifier data, but its correct solutions
    # still train the policy-style SFT task.
    assert per_question("gsm8k_discriminative", "disc") == {(1, True): 1, (1, False): 1,
                                                            (3, True): 1, (3, False): 1}
    assert per_question("gsm8k_correct", "lm") == {(1, True): 3, (2, True): 2, (3, True): 1}
    gsm8k_tasks.register_gsm8k(data_dir=str(tmp_path), heldout_fraction=0.0, balance=False,
                               max_per_class=2)
    assert per_question("gsm8k_discriminative", "disc") == {
        (1, True): 2, (1, False): 1, (2, True): 2, (3, True): 1, (3, False): 2}
  finally:
    gsm8k_tasks.register_gsm8k()


def test_gsm8k_tasks_without_data_fail_when_used(vocab, monkeypatch):
  monkeypatch.delenv(gsm8k_tasks.DATA_ENV, raising=False)
  gsm8k_tasks.register_gsm8k()
  with pytest.raises(ValueError, match="GENRM_DATA_DIR"):
    data.get_batches("gsm8k_verify", "train", batch_size=1, seq_len=64, vocab=vocab)


def test_candidate_file_tasks_labelled_by_answer_checking(root, vocab, tmp_path):
  path = tmp_path / "cands.jsonl"
  _write(path, [{"question_id": i, "question": QUESTIONS[i - 1], "solution": _solution(i, c)}
                for i in (1, 2) for c in (True, False)])
  gsm8k_tasks.register_candidate_tasks("mine", str(path),
                                       gsm8k_jsonl=str(root / "gsm8k" / "train.jsonl"))
  got = set()
  for b in data.get_batches("mine_discriminative", "all", batch_size=4, seq_len=1024,
                            objective="disc", vocab=vocab, repeat=False):
    for row, lab, sids in zip(b["inputs"], b["labels"], b["segment_ids"]):
      for sid in np.unique(sids[sids > 0]):  # packed: each example its own segment
        where = np.flatnonzero(sids == sid)
        got.add((vocab.decode(row[where]).rsplit("The answer is ", 1)[1], float(lab[where[-1]])))
  assert got == {("3.", 1.0), ("4.", 0.0), ("5.", 1.0), ("6.", 0.0)}
  _write(path, [{"question_id": 9, "question": "unknown?", "solution": "The answer is 1."}])
  gsm8k_tasks.register_candidate_tasks("mine2", str(path))
  with pytest.raises(gsm8k_release.BadRecord, match="cands.jsonl:1: no 'correct' label"):
    data.get_batches("mine2_verify", "all", batch_size=1, seq_len=64, vocab=vocab)


def test_released_data(shared_data):
  root = str(shared_data / "genrm-critiques")
  rm = gsm8k_release.read_rm(root)
  yes = sum(c["correct"] for c in rm)
  assert (len(rm), len({c["question"] for c in rm}), yes, len(rm) - yes) == (
      165652, 7345, 113262, 52390)
  assert 0.68 < yes / len(rm) < 0.69
  assert len(gsm8k_release.read_val(root, cot=False)) == 212
  assert len(gsm8k_release.read_val(root, cot=True)) == 259
  val_q = frozenset(gsm8k_release.question_key(c["question"])
                    for c in gsm8k_release.read_val(root, cot=False))
  assert len(val_q) == 128 and not val_q & {gsm8k_release.question_key(c["question"]) for c in rm}
  held = gsm8k_release.split_by_question(rm, "validation", 0.05)
  n_q = len({c["question"] for c in held})
  assert 0.04 * 7345 < n_q < 0.06 * 7345
  per_q = np.bincount(np.unique([c["question"] for c in rm], return_inverse=True)[1])
  assert per_q.min() >= 1 and per_q.max() <= 32 and abs(per_q.mean() - 22.6) < 0.1
