"""Best-of-N eval in 2 local processes: each scores its share, process 0 alone writes the results.

The 2-process run (2 CPU devices each) must write exactly the files of a 1-process run, and
process 1 must write and print nothing.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

import gin
import pytest

from genrm_jax import candidates as cands
from genrm_jax import eval as eval_cli
from genrm_jax import task_rules, word_puzzles
from genrm_jax import vocab as vocab_lib
from tests import test_eval_cli

TIMEOUT_S = 300


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


# Gloo prints "[Gloo] Rank 0 is connected to 1 peer ranks. ..." to stdout piece by piece from
# more than one thread, so two messages can interleave mid-line (seen in CI): strip the pieces,
# not whole lines.
_GLOO_PIECES = re.compile(
    r"\[Gloo\] Rank | is connected to | peer ranks\. |Expected number of connected peer ranks "
    r"is : |\d+|\s+")


def _without_gloo(text: str) -> str:
  return _GLOO_PIECES.sub("", text)


def _scores(path):
  return {(r["question_id"], r["candidate_id"]): r for r in map(json.loads, open(path))}


def test_two_processes_write_what_one_writes(tmp_path, capsys):
  vocab = vocab_lib.train_char_vocab(word_puzzles.texts_for_vocab("last_letters", count=5),
                                     str(tmp_path / "v.model"))
  verifier = test_eval_cli._model_dir(  # pylint: disable=protected-access
      tmp_path, "verifier", vocab.path, vocab.vocab_size)
  recs = word_puzzles.candidates("last_letters", "test", problems_per_length=5,
                                samples_per_problem=4, seed=2)
  task = task_rules.get_task("last_letters")
  for r in recs:
    r["extracted_answer"] = task.extract(r["solution"])
    del r["rationale"]
  recs = recs[:-1]  # unequal pools; 5 problems: unequal shares (3 and 2)
  src = str(tmp_path / "c.jsonl")
  pools = cands.write_candidates(src, recs, require_gold=True)
  assert len(pools) % 2 == 1 and len({len(p) for p in pools}) == 2
  flags = ["--task", "last_letters", "--candidates", src, "--verifier", f"v={verifier}:direct"]

  port = _free_port()
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
  procs = [subprocess.Popen(
      [sys.executable, "-m", "genrm_jax.eval", *flags, "--out", str(tmp_path / "multi"),
       "--distributed=on", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
       f"--process_id={i}"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  try:
    # The reference, in this process (one process, scoring on one device) while they run.
    eval_cli.main([*flags, "--out", str(tmp_path / "single")])
    single_printed = capsys.readouterr().out.splitlines()
    outs = [p.communicate(timeout=TIMEOUT_S) for p in procs]
  finally:
    gin.clear_config()
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, f"process failed ({p.returncode}):\n{out}\n{err[-4000:]}"

  # Process 0 printed what one process prints (but the output folder); process 1 printed
  # nothing but the collectives' own connection messages.
  out0 = outs[0][0]
  table_at = out0.find("method ")
  assert table_at >= 0 and _without_gloo(out0[:table_at]) == "", out0
  printed = out0[table_at:].splitlines()
  assert printed[:-1] == single_printed[:-1]
  assert printed[-1].startswith(f"wrote {tmp_path / 'multi'}") and single_printed[-1].startswith(
      f"wrote {tmp_path / 'single'}")
  assert _without_gloo(outs[1][0]) == "", outs[1][0]
  multi, single = tmp_path / "multi", tmp_path / "single"
  assert sorted(os.listdir(multi)) == sorted(os.listdir(single)) == [
      "accuracy_vs_tokens.png", "best_of_n.png", "meta.json", "reliability.png", "results.json",
      "scores.jsonl"]
  assert not list(tmp_path.glob(".multi*"))  # no temporary directory left behind
  assert json.load(open(multi / "meta.json"))["processes"] == 2

  got, want = _scores(multi / "scores.jsonl"), _scores(single / "scores.jsonl")
  assert list(got) == list(want) and len(got) == len(recs)
  for key, rec in want.items():
    assert got[key]["correct"] == rec["correct"]
    assert got[key]["scores"]["v"] == pytest.approx(rec["scores"]["v"], rel=1e-5)
  res_multi = json.load(open(multi / "results.json"))
  res_single = json.load(open(single / "results.json"))
  assert list(res_multi["best_of_n"]) == list(res_single["best_of_n"]) == [
      "pass@1", "pass@n", "self_consistency", "v", "v+weighted_sc"]
  for name, row in res_single["best_of_n"].items():
    assert res_multi["best_of_n"][name] == pytest.approx(row, abs=1e-9), name
  # Probes were scored across the processes too: the same rates.
  for name, probe in res_single["diagnostics"]["v"]["probes"].items():
    assert res_multi["diagnostics"]["v"]["probes"][name]["rate"] == pytest.approx(
        probe["rate"], abs=1e-9), name
