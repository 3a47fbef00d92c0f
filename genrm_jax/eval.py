"""Best-of-N evaluation of verifiers on a candidates file, against pass@1, pass@N and self-consistency.

    python -m genrm_jax.eval --task gsm8k --candidates FILE --out DIR \\
        [--verifier NAME=MODEL_DIR:METHOD ...] [--cot_votes K] [--gin_file F] [--gin_bindings B]

METHOD is one of direct, cot, discriminative, dpo, judge, judge_cot (``genrm_jax.scoring``'s genrm,
genrm_cot, disc, dpo, llm_judge, llm_judge_cot). Gin configures ``EvalConfig``, ``ScoringConfig``
(e.g. ``ScoringConfig.score = 'normalized'``, ``ScoringConfig.max_rows``), and, with ``--policy``,
``GenerateConfig`` and ``SamplerConfig``; explicit flags win over gin.
Instead of ``--candidates``, ``--policy MODEL_DIR --num_samples N [--num_problems M --split S
--data_file F]`` samples the candidates first (``genrm_jax.generate``) and keeps them as
DIR/candidates.jsonl. ``--scores_file OLD/scores.jsonl`` reuses the verifier scores of an earlier run.

Writes, atomically, DIR/results.json ({method: {str(N): accuracy}}; model-free rows ``pass@1``,
``pass@n``, ``self_consistency``; each verifier NAME and, for probability scores,
``NAME+weighted_sc``), DIR/scores.jsonl (every candidate's label, answer and scores),
DIR/meta.json (pool sizes, what was run and what is missing) and DIR/best_of_n.png, and prints the
table. Accuracies at N are exact expectations over random N-subsets of each pool (see
``genrm_jax.evaluation``; a problem with fewer than N candidates uses its whole pool).

With several JAX processes (``--distributed``, see ``genrm_jax.distributed``), process p scores
only the problems ``pools[p::num_processes]``, each verifier replicated on its own host's devices
(``EvalConfig.mesh`` then shapes the local devices): verifiers small enough to evaluate need no
cross-host mesh, and hosts exchange only the finished scores. Every process reads the candidates
file (all must see it, as they must see DIR); process 0 alone computes, prints and writes the
results. ``--policy`` sampling runs in one process only: with several, sample first with
``genrm_jax.generate``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Sequence

import jax
import numpy as np

from genrm_jax import candidates as cands
from genrm_jax import checkpoint
from genrm_jax import distributed
from genrm_jax import evaluation as ev
from genrm_jax import generate as gen
from genrm_jax import sampler
from genrm_jax import scoring
from genrm_jax import sharding

# Command-line method name -> genrm_jax.scoring method (scoring's own names are accepted too).
METHODS = {"direct": "genrm", "cot": "genrm_cot", "discriminative": "disc", "dpo": "dpo",
           "judge": "llm_judge", "judge_cot": "llm_judge_cot", "genrm": "genrm",
           "genrm_cot": "genrm_cot", "disc": "disc", "llm_judge": "llm_judge",
           "llm_judge_cot": "llm_judge_cot"}
MODEL_FREE = ("pass@1", "pass@n", "self_consistency")
WEIGHTED_SUFFIX = "+weighted_sc"


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """What to evaluate and how (every field is also a gin binding ``EvalConfig.<field>``)."""
  task: str = "gsm8k"
  candidates: str = ""
  out: str = ""
  verifiers: tuple[str, ...] = ()  # "NAME=MODEL_DIR:METHOD"
  scores_file: str = ""  # reuse the scores.jsonl of an earlier run instead of running verifiers
  cot_votes: int = 0  # K rationales per solution (cot, judge_cot); 0 = ScoringConfig's (32)
  seed: int = 0
  weighted_sc_top: int = 0  # weighted SC sums each answer's best T scores (0 = all)
  max_exact_subsets: int = 5000  # weighted SC: enumerate up to this many subsets, else sample
  mc_samples: int = 2000
  require_gold: bool = False
  policy: str = ""  # sample the candidates from this checkpoint (GenerateConfig) instead
  mesh: tuple[int, ...] = ()  # over this process's devices
  overwrite: bool = False


gen.register(EvalConfig)
gen.register(scoring.ScoringConfig)


@dataclasses.dataclass(frozen=True)
class VerifierSpec:
  name: str
  model_dir: str
  method: str


def parse_verifier(spec: str) -> VerifierSpec:
  """"NAME=MODEL_DIR:METHOD" (NAME defaults to METHOD)."""
  name, _, rest = spec.rpartition("=") if "=" in spec else ("", "", spec)
  model_dir, sep, method = rest.rpartition(":")
  if not sep or not model_dir or method not in METHODS:
    raise ValueError(f"--verifier {spec!r}: expected NAME=MODEL_DIR:METHOD with METHOD in "
                     f"{list(METHODS)}")
  name = name or method
  if name in MODEL_FREE or name.endswith(WEIGHTED_SUFFIX):
    raise ValueError(f"--verifier {spec!r}: the name {name!r} is reserved")
  return VerifierSpec(name, model_dir, method)


def score_pools(spec: VerifierSpec, pools: Sequence[cands.Pool], ec: EvalConfig,
                task: gen.Task) -> np.ndarray:
  """One score per candidate of ``pools`` (flat, in order), from one verifier on local devices."""
  mesh = sharding.make_mesh(*ec.mesh, devices=jax.local_devices()) if ec.mesh else None
  verifier = scoring.load_verifier(spec.model_dir, METHODS[spec.method], mesh,
                                   what=f"verifier {spec.name}")
  opts = gen.configure(scoring.ScoringConfig, instruction=task.instruction,
                       num_rationales=ec.cot_votes or None)
  flat = [c for p in pools for c in p.candidates]
  if not flat:  # more processes than problems
    return np.zeros(0)
  result = verifier.score(METHODS[spec.method], [c["question"] for c in flat],
                          [c["solution"] for c in flat], opts, seed=ec.seed)
  return np.asarray(result.scores, np.float64)


def score_shared(spec: VerifierSpec, pools: Sequence[cands.Pool], ec: EvalConfig,
                 task: gen.Task) -> list[np.ndarray]:
  """Every pool's scores on every process; process p scores its share ``pools[p::count]``."""
  count = jax.process_count()
  per_process = distributed.allgather_ragged(
      score_pools(spec, pools[jax.process_index()::count], ec, task))
  out: list[np.ndarray] = [np.zeros(0)] * len(pools)
  for p, flat in enumerate(per_process):
    share = range(p, len(pools), count)
    bounds = np.cumsum([0] + [len(pools[i]) for i in share])
    if bounds[-1] != len(flat):
      raise RuntimeError(f"verifier {spec.name}: process {p} returned {len(flat)} scores for "
                         f"{bounds[-1]} candidates")
    for i, a, b in zip(share, bounds[:-1], bounds[1:]):
      out[i] = flat[a:b]
  return out


def read_scores(path: str, pools: Sequence[cands.Pool]) -> dict[str, list[np.ndarray]]:
  """Scores of every candidate of ``pools`` from an earlier run's scores.jsonl."""
  where_of = {(str(p.question_id), str(c["candidate_id"])): (i, j)
              for i, p in enumerate(pools) for j, c in enumerate(p.candidates)}
  found: dict[str, list[np.ndarray]] = {}
  seen = set()
  with open(path) as f:
    for lineno, line in enumerate(f, 1):
      try:
        rec = json.loads(line)
        key = (str(rec["question_id"]), str(rec["candidate_id"]))
        scores = {name: float(v) for name, v in rec["scores"].items()}
      except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"{path}:{lineno}: not a scores record ({e!r})") from e
      if key not in where_of:
        raise ValueError(f"{path}:{lineno}: candidate {key} is not in the candidates file")
      i, j = where_of[key]
      seen.add(key)
      for name, value in scores.items():
        arrays = found.setdefault(name, [np.full(len(p), np.nan) for p in pools])
        arrays[i][j] = value
  if len(seen) < len(where_of):
    missing = sorted(set(where_of) - seen)[:3]
    raise ValueError(f"{path}: no scores for {len(where_of) - len(seen)} candidates, e.g. {missing}")
  for name, arrays in found.items():
    if any(np.isnan(a).any() for a in arrays):
      raise ValueError(f"{path}: verifier {name!r} lacks a score for some candidates")
  return found


def compute_results(pools: Sequence[cands.Pool], scores: dict[str, list[np.ndarray]],
                    ec: EvalConfig, task: gen.Task
                    ) -> tuple[dict[str, dict[str, float]], list[str]]:
  """({method: {str(N): accuracy}}, notes) at N = 1, 2, 4, ..., the largest pool."""
  ns = ev.report_ns([len(p) for p in pools])
  what = [f"question_id {p.question_id!r}" for p in pools]
  votes = [[a and task.normalize(a) for a in p.answers] for p in pools]
  curves = {
      "pass@1": [np.full(len(p), p.correct.mean()) for p in pools],
      "pass@n": [ev.pass_at_k_curve(p.correct, w) for p, w in zip(pools, what)],
      "self_consistency": [ev.self_consistency_curve(v, p.correct, w)
                           for p, v, w in zip(pools, votes, what)],
  }
  notes = []
  for name, per_pool in scores.items():
    curves[name] = [ev.best_of_k_curve(s, p.correct, f"{w}, verifier {name}")
                    for p, s, w in zip(pools, per_pool, what)]
    if all(np.all((s >= 0) & (s <= 1)) for s in per_pool):
      curves[name + WEIGHTED_SUFFIX] = [
          ev.weighted_sc_curve(v, s, p.correct, top=ec.weighted_sc_top or None,
                               max_exact_subsets=ec.max_exact_subsets,
                               num_samples=ec.mc_samples, seed=ec.seed,
                               ks=[min(n, len(p)) for n in ns], what=w)
          for p, v, s, w in zip(pools, votes, per_pool, what)]
    else:
      notes.append(f"{name}: scores are not probabilities, so no weighted self-consistency")
  notes.append(f"standard error over the {len(pools)} problems at N={ns[-1]}: " + ", ".join(
      f"{name} {ev.stderr_at(c, ns[-1]):.3f}" for name, c in curves.items()))
  return {name: ev.at_ns(c, ns) for name, c in curves.items()}, notes


def format_table(results: dict[str, dict[str, float]]) -> str:
  ns = list(next(iter(results.values())))
  width = max(len(m) for m in results) + 2
  lines = ["method".ljust(width) + "".join(f"N={n}".rjust(8) for n in ns)]
  for method, row in results.items():
    lines.append(method.ljust(width) + "".join(f"{row[n]:8.3f}" for n in ns))
  return "\n".join(lines)


def plot(results: dict[str, dict[str, float]], path: str, title: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for method, row in results.items():
    ns = [int(n) for n in row]
    bound = method in ("pass@1", "pass@n")
    ax.plot(ns, list(row.values()), linestyle={"pass@1": ":", "pass@n": "--"}.get(method, "-"),
            color="gray" if bound else None, marker=None if bound else "o", label=method)
  ax.set_xscale("log", base=2)
  ax.set_xticks(ns, [str(n) for n in ns])
  ax.set_xlabel("N (candidates per problem)")
  ax.set_ylabel("Best-of-N accuracy")
  ax.set_ylim(0, 1)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _scores_lines(pools, scores):
  for i, p in enumerate(pools):
    for j, c in enumerate(p.candidates):
      yield {"question_id": p.question_id, "candidate_id": c["candidate_id"],
             "correct": c["correct"], "extracted_answer": c["extracted_answer"],
             "scores": {name: float(s[i][j]) for name, s in scores.items()}}


def write_outputs(out: str, ec: EvalConfig, specs: Sequence[VerifierSpec],
                  pools: Sequence[cands.Pool], scores: dict[str, list[np.ndarray]],
                  task: gen.Task, cand_file: str, t0: float
                  ) -> tuple[dict[str, dict[str, float]], list[str]]:
  """Computes the results and writes results.json, scores.jsonl, meta.json and the plot."""
  results, notes = compute_results(pools, scores, ec, task)
  if not scores:
    notes.append("no verifier: only the model-free rows; pass --verifier NAME=MODEL_DIR:METHOD "
                 f"(METHOD in {', '.join(list(METHODS)[:6])}) or --scores_file for Best-of-N rows")
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  cands.write_jsonl_atomic(os.path.join(out, "scores.jsonl"), _scores_lines(pools, scores))
  sizes = [len(p) for p in pools]
  meta = {"task": ec.task, "candidates": cand_file if ec.candidates else "candidates.jsonl",
          "num_problems": len(pools), "pool_sizes": {"min": min(sizes), "max": max(sizes),
                                                     "mean": float(np.mean(sizes))},
          "verifiers": [dataclasses.asdict(s) for s in specs], "notes": notes,
          "config": dataclasses.asdict(ec), "processes": jax.process_count(),
          "seconds": time.time() - t0}
  with open(os.path.join(out, "meta.json"), "w") as f:
    json.dump(meta, f, indent=2)
  plot(results, os.path.join(out, "best_of_n.png"),
       f"{ec.task}: {len(pools)} problems, {min(sizes)}-{max(sizes)} candidates each")
  return results, notes


def run(ec: EvalConfig, sc: sampler.SamplerConfig, gc: gen.GenerateConfig | None = None
        ) -> dict[str, dict[str, float]] | None:
  """Evaluates (and, with ``ec.policy``, first generates) candidates; writes ``ec.out``.

  Every process must call it; the results come back on process 0, None on the others.
  """
  t0 = time.time()
  task = gen.get_task(ec.task)
  specs = [parse_verifier(v) for v in ec.verifiers]
  if len({s.name for s in specs}) < len(specs):
    raise ValueError(f"verifier names must be distinct: {[s.name for s in specs]}")
  if bool(ec.candidates) == bool(ec.policy):
    raise ValueError("give exactly one of --candidates FILE and --policy MODEL_DIR")
  if ec.policy and jax.process_count() > 1:
    raise ValueError("--policy samples candidates in a single process; with several processes, "
                     "sample them first (python -m genrm_jax.generate) and pass --candidates")
  results = None
  with checkpoint.atomic_dir(ec.out, overwrite=ec.overwrite) as tmp:
    cand_file = ec.candidates
    if ec.policy:
      gc = dataclasses.replace(gc or gen.GenerateConfig(), checkpoint=ec.policy, task=ec.task,
                               seed=ec.seed, mesh=ec.mesh)
      cand_file = os.path.join(tmp, "candidates.jsonl")
      cands.write_candidates(cand_file, gen.generate(gc, sc), require_gold=True)
    pools = cands.read_candidates(cand_file, require_gold=ec.require_gold, checker=task.check)
    scores = read_scores(ec.scores_file, pools) if ec.scores_file else {}
    for spec in specs:
      scores[spec.name] = score_shared(spec, pools, ec, task)
    if distributed.is_main():
      results, notes = write_outputs(tmp, ec, specs, pools, scores, task, cand_file, t0)
  if results is None:
    return None
  print(format_table(results))
  sizes = [len(p) for p in pools]
  if min(sizes) != max(sizes):
    print(f"note: pools hold {min(sizes)} to {max(sizes)} candidates; at N above a pool's size "
          "that problem uses its whole pool")
  for note in notes:
    print(f"note: {note}")
  print(f"wrote {ec.out}/results.json, best_of_n.png, scores.jsonl ({time.time() - t0:.1f}s)")
  return results


def main(argv: Sequence[str] | None = None) -> None:
  ap = argparse.ArgumentParser(prog="python -m genrm_jax.eval", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--task", choices=sorted(gen.TASKS))
  ap.add_argument("--candidates")
  ap.add_argument("--out")
  ap.add_argument("--verifier", action="append", default=None, help="NAME=MODEL_DIR:METHOD")
  ap.add_argument("--scores_file")
  ap.add_argument("--cot_votes", type=int)
  ap.add_argument("--seed", type=int)
  ap.add_argument("--require_gold", action="store_true", default=None)
  ap.add_argument("--overwrite", action="store_true", default=None)
  ap.add_argument("--policy", help="sample candidates from this policy checkpoint first")
  ap.add_argument("--num_samples", type=int)
  ap.add_argument("--num_problems", type=int)
  ap.add_argument("--split")
  ap.add_argument("--data_file")
  ap.add_argument("--gin_file", action="append", default=[])
  ap.add_argument("--gin_bindings", action="append", default=[])
  distributed.add_flags(ap)
  args = ap.parse_args(argv)
  distributed.initialize_from_flags(args)
  gen.parse_gin(args.gin_file, args.gin_bindings)
  ec = gen.configure(EvalConfig, task=args.task, candidates=args.candidates, out=args.out,
                     verifiers=tuple(args.verifier) if args.verifier else None,
                     scores_file=args.scores_file, cot_votes=args.cot_votes, seed=args.seed,
                     require_gold=args.require_gold, overwrite=args.overwrite, policy=args.policy)
  gc = gen.configure(gen.GenerateConfig, num_samples=args.num_samples,
                     num_problems=args.num_problems, split=args.split, data_file=args.data_file)
  if not ec.out:
    ap.error("--out is required (as a flag or EvalConfig.out)")
  try:
    run(ec, gen.configure(sampler.SamplerConfig), gc)
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  main()
