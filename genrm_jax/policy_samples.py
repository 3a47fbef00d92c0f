"""Candidate solutions sampled from a policy: N checked samples of every problem of a task split.

The library half of ``python -m genrm_jax.generate`` (its command line), also what
``genrm_jax.eval --policy`` samples with. Each sample's final answer is extracted and checked
against the gold answer with the task's rules (``genrm_jax.task_rules``).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from genrm_jax import candidates as cands
from genrm_jax import checkpoint
from genrm_jax import cli
from genrm_jax import distributed
from genrm_jax import formats
from genrm_jax import gsm8k_release
from genrm_jax import progress
from genrm_jax import sampler
from genrm_jax import task_rules
from genrm_jax import word_puzzles


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
  """What to sample: the policy, the problems and how many solutions each."""
  checkpoint: str = ""
  task: str = "gsm8k"
  split: str = "test"
  num_problems: int = 0  # 0 = all problems of the split (GSM8K) / required (algorithmic)
  num_samples: int = 16
  data_file: str = ""  # GSM8K jsonl ({"question", "answer"}) for --task gsm8k
  problem_seed: int = 0  # which algorithmic problems
  test_length: int = 0  # algorithmic test split: words per problem (0 = the paper's length)
  lengths: tuple[int, ...] = ()  # algorithmic train/validation: words per problem (() = 2-4)
  seed: int = 0  # sampling seed
  prompts_per_batch: int = 8  # prompts sampled together (each with num_samples rows)
  mesh: tuple[int, ...] = ()  # (data, fsdp, tensor); empty = no mesh (single device)
  out: str = ""


cli.register(GenerateConfig)
cli.register(sampler.SamplerConfig)


def load_problems(gc: GenerateConfig) -> list[dict[str, Any]]:
  """[{question_id, question, gold_answer}] of the configured task and split."""
  if gc.task == "gsm8k":
    if not gc.data_file:
      raise ValueError("--task gsm8k needs --data_file (a GSM8K jsonl: question, answer)")
    problems = [{"question_id": f"{gc.split}-{i}", "question": p["question"],
                 "gold_answer": p["gold"]}
                for i, p in enumerate(gsm8k_release.load_gsm8k(gc.data_file))]
    return problems[:gc.num_problems] if gc.num_problems else problems
  task_rules.get_task(gc.task)
  if not gc.num_problems:
    raise ValueError(f"--task {gc.task} needs --num_problems (problems per length)")
  return [{"question_id": f"{gc.split}-{i}", "question": p.question, "gold_answer": p.answer}
          for i, p in enumerate(word_puzzles.split_problems(gc.task, gc.split, gc.num_problems,
                                                           gc.problem_seed,
                                                           gc.test_length or None,
                                                           tuple(gc.lengths) or None))]


def write(gc: GenerateConfig, sc: sampler.SamplerConfig) -> str:
  """Samples the candidates (``generate``) and writes them to ``gc.out``; returns a summary."""
  t0 = time.time()
  recs = generate(gc, sc)
  pools = cands.write_candidates(gc.out, recs, require_gold=True)
  acc = np.mean([c["correct"] for c in recs])
  return (f"wrote {gc.out}: {len(pools)} problems x {gc.num_samples} samples, {acc:.3f} correct, "
          f"{time.time() - t0:.1f}s")


def generate(gc: GenerateConfig, sc: sampler.SamplerConfig) -> list[dict[str, Any]]:
  """Candidate records: ``gc.num_samples`` checked samples of every problem."""
  task = task_rules.get_task(gc.task)
  mesh = cli.mesh(gc.mesh)
  cfg, params, meta, vocab = checkpoint.load_model_and_vocab(gc.checkpoint, mesh,
                                                             what="policy checkpoint")
  task_rules.check_trained_task(meta, gc.task, f"policy checkpoint {gc.checkpoint}")
  problems = load_problems(gc)
  out = []
  with progress.Progress("sampling", len(problems), "problems",
                         enabled=distributed.is_main()) as bar:
    for start in range(0, len(problems), gc.prompts_per_batch):
      chunk = problems[start:start + gc.prompts_per_batch]
      prompts = [formats.question_prompt(p["question"], task.instruction) for p in chunk]
      samples = sampler.sample(cfg, params, vocab, prompts, sc, seed=gc.seed + start,
                               num_samples=gc.num_samples, mesh=mesh)
      for p, comps in zip(chunk, samples):
        for i, comp in enumerate(comps):
          solution = comp.text.strip()
          got = task.extract(solution)
          out.append({**p, "candidate_id": i, "solution": solution, "extracted_answer": got,
                      "correct": task.check(got, p["gold_answer"]),
                      "finish_reason": comp.finish_reason, "num_tokens": len(comp.token_ids),
                      "task": gc.task})
      bar.update(len(chunk))
  return out
