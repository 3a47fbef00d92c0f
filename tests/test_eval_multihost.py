"""Best-of-N eval in 2 local processes: each scores its share, process 0 alone writes the results.

The 2-process run (2 CPU devices each) must write exactly the files of a 1-process run, and
process 1 must write and print nothing.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import gin
import pytest

from genrm_jax import algorithmic, generate
from genrm_jax import candidates as cands
from genrm_jax import eval as eval_cli
from genrm_jax import vocab as vocab_lib
from tests import test_eval_cli

TIMEOUT_S = 300


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _scores(path):
  return {(r["question_id"], r["candidate_id"]): r for r in map(json.loads, open(path))}


def test_two_processes_write_what_one_writes(tmp_path):
  vocab = vocab_lib.train_char_vocab(algorithmic.texts_for_vocab("last_letters", count=5),
                                     str(tmp_path / "v.model"))
  verifier = test_eval_cli._model_dir(  # pylint: disable=protected-access
      tmp_path, "verifier", vocab.path, vocab.vocab_size)
  recs = algorithmic.candidates("last_letters", "test", problems_per_length=5,
                                samples_per_problem=4, seed=2)
  task = generate.get_task("last_letters")
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
    outs = [p.communicate(timeout=TIMEOUT_S) for p in procs]
  finally:
    gin.clear_config()
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, f"process failed ({p.returncode}):\n{out}\n{err[-4000:]}"

  # Process 0 printed the table; process 1 printed nothing but the collectives' own
  # connection lines (Gloo writes those to stdout itself).
  printed = [[l for l in out.splitlines() if not l.startswith("[Gloo]")] for out, _ in outs]
  assert printed[0][0].startswith("method") and printed[0][-1].startswith("wrote ")
  assert printed[1] == []
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
