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

Writes, atomically, to DIR:
- results.json: ``best_of_n`` ({method: {str(N): accuracy}}; model-free rows ``pass@1``, ``pass@n``,
  ``self_consistency``; each verifier NAME, for CoT also ``NAME[K=k]`` with its first k votes, and
  for probability scores ``NAME+weighted_sc``), ``tokens_per_problem`` (the same keys: generated
  tokens per problem, solutions plus rationales), ``stderr`` (over problems, at the largest N;
  ``stderr_by_n`` at each N), ``first_k_votes`` (the ``[K=k]`` rows),
  ``vs_pass@1`` (each method's paired per-problem difference from pass@1 and its standard error),
  ``between_methods`` (the same for each pair of self-consistency and the verifier rows but
  ``[K=k]``: ``{A: {B: {"diff": A - B, "se"}}}``, each pair once, in the table's order),
  and ``diagnostics`` per verifier (within-pool and pooled ROC AUC, Brier score, ECE and reliability
  bins of probability scores, and for the algorithmic tasks the counterfactual probe rates; see
  ``genrm_jax.diagnostics``);
- scores.jsonl (every candidate's label, answer, scores and, for CoT, its votes), meta.json (pool
  sizes, what was run and what is missing), best_of_n.png, accuracy_vs_tokens.png and
  reliability.png;
and prints the tables. Accuracies at N are exact expectations over random N-subsets of each pool (see
``genrm_jax.best_of_n``; a problem with fewer than N candidates uses its whole pool).

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
import math
import os
import random
import time
from typing import Sequence

import jax
import numpy as np

from genrm_jax import best_of_n as ev
from genrm_jax import candidates as cands
from genrm_jax import checkpoint
from genrm_jax import cli
from genrm_jax import diagnostics as diag
from genrm_jax import distributed
from genrm_jax import files
from genrm_jax import generate
from genrm_jax import plots
from genrm_jax import progress
from genrm_jax import scoring
from genrm_jax import scoring_passes
from genrm_jax import task_rules
from genrm_jax import vocab as vocab_lib
from genrm_jax import word_puzzles
from genrm_jax.config import SamplerConfig, ScoringConfig

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
  probes: bool = True  # counterfactual probes (algorithmic tasks)
  calibration_bins: int = 10
  overwrite: bool = False


cli.register(EvalConfig)
cli.register(ScoringConfig)


@dataclasses.dataclass(frozen=True)
class VerifierArg:
  """One ``--verifier NAME=MODEL_DIR:METHOD``."""
  name: str
  model_dir: str
  method: str


@dataclasses.dataclass
class Scored:
  """One verifier's outputs, a numpy array per pool (candidates in file order)."""
  score: list[np.ndarray]
  prob: list[np.ndarray] | None = None  # probabilities for calibration (not DPO's log-probs)
  votes: list[np.ndarray] | None = None  # CoT: [n, K] per-rationale scores
  rationale_tokens: list[np.ndarray] | None = None  # CoT: [n, K]

  FIELDS = ("score", "prob", "votes", "rationale_tokens")


def method_names() -> dict[str, str]:
  """Command-line method name (``Method.alias``) -> genrm_jax.scoring method; scoring's own
  names are accepted too."""
  known = scoring.methods()
  return {**{m.alias: name for name, (_, m) in known.items()}, **{n: n for n in known}}


def parse_verifier(spec: str) -> VerifierArg:
  """"NAME=MODEL_DIR:METHOD" (NAME defaults to METHOD)."""
  name, _, rest = spec.rpartition("=") if "=" in spec else ("", "", spec)
  model_dir, sep, method = rest.rpartition(":")
  names = method_names()
  if not sep or not model_dir or method not in names:
    raise ValueError(f"--verifier {spec!r}: expected NAME=MODEL_DIR:METHOD with METHOD in "
                     f"{list(names)}")
  name = name or method
  if name in MODEL_FREE or name.endswith(WEIGHTED_SUFFIX) or "[" in name:
    raise ValueError(f"--verifier {spec!r}: the name {name!r} is reserved")
  return VerifierArg(name, model_dir, method)


def _fields(method: str) -> tuple[str, ...]:
  """The outputs a scoring method has (the same on every process, pools or not)."""
  m = scoring.method(method)
  if m.votes:
    return Scored.FIELDS
  return ("score", "prob") if m.probability else ("score",)


def score_pools(spec: VerifierArg, pools: Sequence[cands.Pool], ec: EvalConfig,
                opts: ScoringConfig) -> dict[str, np.ndarray]:
  """``Scored`` fields, flat over the candidates of ``pools``, from one verifier on local devices."""
  method = method_names()[spec.method]
  mesh = cli.mesh(ec.mesh, devices=jax.local_devices())
  verifier = scoring.load_verifier(spec.model_dir, method, mesh, what=f"verifier {spec.name}")
  flat = [c for p in pools for c in p.candidates]
  k = opts.num_rationales
  if not flat:  # more processes than problems
    return {f: np.zeros((0, k) if f in ("votes", "rationale_tokens") else 0)
            for f in _fields(method)}
  # A sampled pool repeats solutions (the default run's 2,048 test candidates hold 306 distinct
  # ones): each distinct (question, solution) is scored once and its outputs shared, so a
  # candidate's score is a function of its text, and CoT spends its K rationales once per text.
  # The token accounting still charges every candidate its own solution and rationales.
  index: dict[tuple[str, str], int] = {}
  where = np.array([index.setdefault((c["question"], c["solution"]), len(index)) for c in flat])
  unique = list(index)
  with (progress.Progress(f"scoring with {spec.name}", len(unique), "items",
                          enabled=distributed.is_main()) as bar,
        scoring_passes.reporting_to(bar.update)):
    r = verifier.score(method, [q for q, _ in unique], [s for _, s in unique], opts,
                       seed=ec.seed)
  out = {"score": np.asarray(r.scores, np.float64)[where]}
  m = scoring.method(method)
  if m.probability:
    out["prob"] = m.probability(out["score"])
  if m.votes:
    out["votes"] = np.asarray(r.rationale_scores, np.float64)[where]
    out["rationale_tokens"] = np.asarray(r.rationale_tokens, np.float64)[where]
  return out


def score_shared(spec: VerifierArg, pools: Sequence[cands.Pool], ec: EvalConfig,
                 opts: ScoringConfig) -> Scored:
  """Every pool's outputs on every process; process p scores its share ``pools[p::count]``."""
  count = jax.process_count()
  local = score_pools(spec, pools[jax.process_index()::count], ec, opts)
  fields = {}
  for field, values in local.items():
    per_process = distributed.allgather_ragged(values)
    out: list[np.ndarray] = [np.zeros(0)] * len(pools)
    for p, flat in enumerate(per_process):
      share = range(p, len(pools), count)
      bounds = np.cumsum([0] + [len(pools[i]) for i in share])
      if bounds[-1] != len(flat):
        raise RuntimeError(f"verifier {spec.name}: process {p} returned {len(flat)} {field}s for "
                           f"{bounds[-1]} candidates")
      for i, a, b in zip(share, bounds[:-1], bounds[1:]):
        out[i] = flat[a:b]
    fields[field] = out
  return Scored(**fields)


def read_scores(path: str, pools: Sequence[cands.Pool]) -> dict[str, Scored]:
  """Outputs of every candidate of ``pools`` from an earlier run's scores.jsonl."""
  where_of = {(str(p.question_id), str(c["candidate_id"])): (i, j)
              for i, p in enumerate(pools) for j, c in enumerate(p.candidates)}
  found: dict[str, dict[str, list]] = {}
  seen = set()
  with open(path) as f:
    for lineno, line in enumerate(f, 1):
      try:
        rec = json.loads(line)
        key = (str(rec["question_id"]), str(rec["candidate_id"]))
        values = {"score": {name: float(v) for name, v in rec["scores"].items()}}
        for field in Scored.FIELDS[1:]:
          values[field] = {name: np.asarray(v, np.float64)
                           for name, v in rec.get(field, {}).items()}
      except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"{path}:{lineno}: not a scores record ({e!r})") from e
      if key not in where_of:
        raise ValueError(f"{path}:{lineno}: candidate {key} is not in the candidates file")
      i, j = where_of[key]
      seen.add(key)
      for field, by_name in values.items():
        for name, value in by_name.items():
          arrays = found.setdefault(name, {}).setdefault(field, [[None] * len(p) for p in pools])
          arrays[i][j] = value
  if len(seen) < len(where_of):
    missing = sorted(set(where_of) - seen)[:3]
    raise ValueError(f"{path}: no scores for {len(where_of) - len(seen)} candidates, e.g. {missing}")
  out = {}
  for name, fields in found.items():
    arrays = {}
    for field, per_pool in fields.items():
      if any(v is None for pool in per_pool for v in pool):
        raise ValueError(f"{path}: verifier {name!r} lacks a {field} for some candidates")
      arrays[field] = [np.array(pool, np.float64) for pool in per_pool]
    if "score" not in arrays:
      raise ValueError(f"{path}: verifier {name!r} has no scores")
    out[name] = Scored(**arrays)
  return out


# ----------------------------------------------------------------------------- probes


def probe_pools(pools: Sequence[cands.Pool], task_name: str, seed: int) -> list[cands.Pool]:
  """Per problem: its reference solution, then the ``word_puzzles.counterfactuals`` edits of it (and
  of one of its wrong candidates), as a pool whose candidate ids are the probe names."""
  out = []
  for p in pools:
    problem = word_puzzles.problem_from_question(task_name, p.question)
    rng = random.Random(f"probes/{seed}/{p.question_id}")
    wrong = [c["solution"] for c in p.candidates if not c["correct"]]
    edits = word_puzzles.counterfactuals(problem, rng, rng.choice(wrong) if wrong else None)
    sols = [("reference", problem.solution)] + list(edits.items())
    out.append(cands.Pool(f"probe/{p.question_id}", p.question, problem.answer, tuple(
        {"question_id": f"probe/{p.question_id}", "question": p.question, "solution": s,
         "candidate_id": name, "correct": name == "reference",
         "extracted_answer": word_puzzles.extract_answer(s)} for name, s in sols)))
  return out


def probe_rates(probes: Sequence[cands.Pool], scores: Sequence[np.ndarray]) -> dict[str, dict]:
  """{probe: {"rate", "problems"}}: how often the edited wrong solution outscores the reference."""
  out = {}
  for name in word_puzzles.PROBES:
    ref, edited = [], []
    for pool, s in zip(probes, scores):
      ids = [c["candidate_id"] for c in pool.candidates]
      if name in ids:
        ref.append(s[ids.index("reference")])
        edited.append(s[ids.index(name)])
    if ref:
      out[name] = {"rate": diag.probe_rate(ref, edited), "problems": len(ref)}
  return out


# ----------------------------------------------------------------------------- results


def _votes_ks(k: int) -> list[int]:
  """The vote counts below K reported for CoT verifiers: 1, 2, 4, ..."""
  return [1 << i for i in range(max(k - 1, 0).bit_length()) if 1 << i < k]


def solution_tokens(pools: Sequence[cands.Pool], vocab: vocab_lib.Vocab | None
                    ) -> list[np.ndarray] | None:
  """Generated tokens of each candidate: ``num_tokens`` from generate, else its text in ``vocab``
  plus EOS; None when neither is known."""
  if all("num_tokens" in c for p in pools for c in p.candidates):
    return [np.array([c["num_tokens"] for c in p.candidates], np.float64) for p in pools]
  if vocab is None:
    return None
  return [np.array([len(vocab.encode(c["solution"].rstrip("\n"))) + 1 for c in p.candidates],
                   np.float64) for p in pools]


def compute_results(pools: Sequence[cands.Pool], scores: dict[str, Scored], ec: EvalConfig,
                    task: task_rules.Task, sol_tokens: list[np.ndarray] | None = None) -> dict:
  """results.json's content but diagnostics (see the module docstring)."""
  ns = ev.report_ns([len(p) for p in pools])
  what = [f"question_id {p.question_id!r}" for p in pools]
  votes = [[a and task.normalize(a) for a in p.answers] for p in pools]
  curves = {
      "pass@1": [np.full(len(p), p.correct.mean()) for p in pools],
      "pass@n": [ev.pass_at_k_curve(p.correct, w) for p, w in zip(pools, what)],
      "self_consistency": [ev.self_consistency_curve(v, p.correct, w)
                           for p, v, w in zip(pools, votes, what)],
  }
  tokens = {}
  if sol_tokens is not None:
    one = diag.tokens_per_problem(sol_tokens, [1])["1"]  # pass@1 reads one sample at any N
    tokens = {"pass@1": {str(n): one for n in ns}, **{
        name: diag.tokens_per_problem(sol_tokens, ns) for name in MODEL_FREE[1:]}}
  notes = []
  first_votes = set()  # the CoT rows of a verifier's first k votes: a part of its row, not a rival
  for name, sc in scores.items():
    rows = {name: (sc.score, sc.votes[0].shape[1] if sc.votes else 0)}
    for k in _votes_ks(sc.votes[0].shape[1]) if sc.votes else ():
      rows[f"{name}[K={k}]"] = ([v[:, :k].mean(axis=1) for v in sc.votes], k)
      first_votes.add(f"{name}[K={k}]")
    for row, (per_pool, k) in rows.items():
      curves[row] = [ev.best_of_k_curve(s, p.correct, f"{w}, verifier {row}")
                     for p, s, w in zip(pools, per_pool, what)]
      if sol_tokens is not None and (not k or sc.rationale_tokens):
        tokens[row] = diag.tokens_per_problem(sol_tokens, ns, sc.rationale_tokens, k)
    if all(np.all((s >= 0) & (s <= 1)) for s in sc.score):
      curves[name + WEIGHTED_SUFFIX] = [
          ev.weighted_sc_curve(v, s, p.correct, top=ec.weighted_sc_top or None,
                               max_exact_subsets=ec.max_exact_subsets,
                               num_samples=ec.mc_samples, seed=ec.seed,
                               ks=[min(n, len(p)) for n in ns], what=w)
          for p, v, s, w in zip(pools, votes, sc.score, what)]
      if name in tokens:
        tokens[name + WEIGHTED_SUFFIX] = tokens[name]
    else:
      notes.append(f"{name}: scores are not probabilities, so no weighted self-consistency")
  largest = ns[-1]
  at = {name: np.array([c[min(largest, len(c)) - 1] for c in cs]) for name, cs in curves.items()}
  # Two methods' Best-of-N on the same pools are correlated, so whether one is above the other
  # (the paper's order of verifiers, or a verifier against pass@1) is read from the per-problem
  # difference: its standard error is far below either method's own.
  def paired(a: str, b: str) -> dict[str, float]:
    d = at[a] - at[b]
    se = float(np.std(d, ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("nan")
    return {"diff": float(d.mean()), "se": se}
  ranked = [n for n in at if n == "self_consistency" or n not in {*MODEL_FREE, *first_votes}]
  return {"best_of_n": {name: ev.at_ns(c, ns) for name, c in curves.items()},
          "tokens_per_problem": tokens,
          "stderr": {name: ev.stderr_at(c, largest) for name, c in curves.items()},
          "stderr_by_n": {name: {str(n): ev.stderr_at(c, n) for n in ns}
                          for name, c in curves.items()},
          "first_k_votes": sorted(first_votes),
          "vs_pass@1": {n: paired(n, "pass@1") for n in at if n not in MODEL_FREE},
          "between_methods": {a: {b: paired(a, b) for b in ranked[i + 1:]}
                              for i, a in enumerate(ranked[:-1])},
          "largest_n": largest, "notes": notes}


def verifier_diagnostics(pools: Sequence[cands.Pool], scores: dict[str, Scored],
                         probe_scores: dict[str, list[np.ndarray]],
                         probes: Sequence[cands.Pool], bins: int) -> dict[str, dict]:
  correct = [p.correct for p in pools]
  out = {}
  for name, sc in scores.items():
    out[name] = diag.verifier_diagnostics(sc.score, correct, sc.prob, bins)
    if name in probe_scores:
      out[name]["probes"] = probe_rates(probes, probe_scores[name])
  return out


def format_table(results: dict[str, dict[str, float]]) -> str:
  ns = list(next(iter(results.values())))
  width = max(len(m) for m in results) + 2
  lines = ["method".ljust(width) + "".join(f"N={n}".rjust(8) for n in ns)]
  for method, row in results.items():
    lines.append(method.ljust(width) + "".join(f"{row[n]:8.3f}" for n in ns))
  return "\n".join(lines)


def format_diagnostics(diagnostics: dict[str, dict]) -> str:
  """One line a verifier; a probe rate above ``diag.PROBE_ALARM`` is marked with '!'."""
  width = max([len(n) for n in diagnostics] + [8]) + 2
  head = ["AUC in pool", "AUC pooled", "Brier", "ECE", *word_puzzles.PROBES]
  lines = ["verifier".ljust(width) + "".join(h.rjust(max(len(h), 8) + 2) for h in head)]
  for name, d in diagnostics.items():
    cells = [d["within_pool_auc"], d["pooled_auc"], d.get("brier"), d.get("ece")]
    cells += [d.get("probes", {}).get(p, {}).get("rate") for p in word_puzzles.PROBES]
    row = []
    for h, v in zip(head, cells):
      mark = "!" if h in word_puzzles.PROBES and v is not None and v > diag.PROBE_ALARM else " "
      row.append(("-" if v is None or (isinstance(v, float) and math.isnan(v))
                  else f"{v:.3f}{mark}").rjust(max(len(h), 8) + 2))
    lines.append(name.ljust(width) + "".join(row))
  if any(d.get("probes") for d in diagnostics.values()):
    lines.append(f"probes: fraction of problems where a wrong edit outscores the correct solution "
                 f"(0 = checks, .5 = random, '!' above {diag.PROBE_ALARM}: reads surface features)")
  return "\n".join(lines)


def _scores_lines(pools, scores: dict[str, Scored]):
  for i, p in enumerate(pools):
    for j, c in enumerate(p.candidates):
      rec = {"question_id": p.question_id, "candidate_id": c["candidate_id"],
             "correct": c["correct"], "extracted_answer": c["extracted_answer"],
             "scores": {name: float(s.score[i][j]) for name, s in scores.items()}}
      for field in Scored.FIELDS[1:]:
        got = {name: np.asarray(getattr(s, field)[i][j]).tolist()
               for name, s in scores.items() if getattr(s, field) is not None}
        if got:
          rec[field] = got
      yield rec


def write_outputs(out: str, ec: EvalConfig, specs: Sequence[VerifierArg],
                  pools: Sequence[cands.Pool], scores: dict[str, Scored], task: task_rules.Task,
                  cand_file: str, t0: float, diagnostics: dict[str, dict],
                  sol_tokens: list[np.ndarray] | None) -> dict:
  """Computes the results and writes results.json, scores.jsonl, meta.json and the plots."""
  res = compute_results(pools, scores, ec, task, sol_tokens)
  notes = res.pop("notes")
  res["diagnostics"] = diagnostics
  largest = res["largest_n"]
  notes.append(f"standard error over the {len(pools)} problems at N={largest}: " + ", ".join(
      f"{name} {se:.3f}" for name, se in res["stderr"].items()))
  if res["vs_pass@1"]:
    notes.append(f"paired difference from pass@1 at N={largest} (+- its standard error): " +
                 ", ".join(f"{name} {d['diff']:+.3f} +- {d['se']:.3f}"
                           for name, d in res["vs_pass@1"].items()))
  between = [f"{a} - {b} {d['diff']:+.3f} +- {d['se']:.3f}"
             for a, row in res["between_methods"].items() for b, d in row.items()]
  if between:
    notes.append(f"paired differences between methods at N={largest}: " + ", ".join(between))
  if sol_tokens is None:
    notes.append("no token counts: the candidates lack num_tokens and no verifier vocabulary "
                 "was loaded, so tokens_per_problem is empty")
  if not scores:
    notes.append("no verifier: only the model-free rows; pass --verifier NAME=MODEL_DIR:METHOD "
                 f"(METHOD in {', '.join(m.alias for _, m in scoring.methods().values())}) or "
                 "--scores_file for Best-of-N rows")
  files.write_jsonl(os.path.join(out, "scores.jsonl"), _scores_lines(pools, scores))
  sizes = [len(p) for p in pools]
  meta = {"task": ec.task, "candidates": cand_file if ec.candidates else "candidates.jsonl",
          "num_problems": len(pools), "pool_sizes": {"min": min(sizes), "max": max(sizes),
                                                     "mean": float(np.mean(sizes))},
          "verifiers": [dataclasses.asdict(s) for s in specs], "notes": notes,
          "config": dataclasses.asdict(ec), "processes": jax.process_count(),
          "seconds": time.time() - t0}
  files.write_atomic(os.path.join(out, "meta.json"), strict_json(meta))
  each = f"{max(sizes)}" if min(sizes) == max(sizes) else f"{min(sizes)}-{max(sizes)}"
  title = f"{ec.task}: {len(pools)} problems, {each} candidates each"
  # CoT's first-k-votes rows are parts of their verifier's row: on the token plot only.
  plots.best_of_n(res["best_of_n"], os.path.join(out, "best_of_n.png"), title,
                  res["stderr_by_n"], leave_out=res["first_k_votes"])
  compute = [m for m in res["tokens_per_problem"]
             if m not in ("pass@1", "pass@n") and not m.endswith(WEIGHTED_SUFFIX)]
  if compute:
    plots.accuracy_vs_tokens(res["best_of_n"], res["tokens_per_problem"], compute,
                             os.path.join(out, "accuracy_vs_tokens.png"), title,
                             res["stderr_by_n"])
  calibrated = {n: d["reliability"] for n, d in diagnostics.items() if "reliability" in d}
  if calibrated:
    plots.reliability(calibrated, os.path.join(out, "reliability.png"), ec.task,
                      list(res["best_of_n"]))
  # Last, and whole or not at all: the pipeline takes an existing results.json as a finished stage.
  files.write_atomic(os.path.join(out, "results.json"), strict_json(res))
  res["notes"] = notes
  return res


def strict_json(obj) -> str:
  """JSON that strict parsers (jq, JavaScript) read: NaN and infinities (an empty reliability bin,
  an AUC without both classes) become null instead of Python's bare ``NaN``."""
  def clean(x):
    if isinstance(x, float) and not math.isfinite(x):
      return None
    if isinstance(x, dict):
      return {k: clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
      return [clean(v) for v in x]
    return x
  return json.dumps(clean(obj), indent=2, allow_nan=False)


def _first_vocab(specs: Sequence[VerifierArg]) -> vocab_lib.Vocab | None:
  for s in specs:
    tok = checkpoint.tokenizer_path(s.model_dir)
    if tok:
      return vocab_lib.load_vocab(tok)
  return None


def run(ec: EvalConfig, sc: SamplerConfig, gc: generate.GenerateConfig | None = None,
        scoring_opts: ScoringConfig | None = None) -> dict | None:
  """Evaluates (and, with ``ec.policy``, first generates) candidates; writes ``ec.out``.

  ``scoring_opts``: how verifiers score (default: ``ScoringConfig`` from gin); the task's
  instruction and ``ec.cot_votes`` are set on it. Every process must call it; the results come
  back on process 0, None on the others.
  """
  t0 = time.time()
  task = task_rules.get_task(ec.task)
  opts = scoring_opts or cli.configure(ScoringConfig)
  opts = dataclasses.replace(opts, instruction=task.instruction,
                             num_rationales=ec.cot_votes or opts.num_rationales)
  specs = [parse_verifier(v) for v in ec.verifiers]
  if len({s.name for s in specs}) < len(specs):
    raise ValueError(f"verifier names must be distinct: {[s.name for s in specs]}")
  for s in specs:
    what = f"verifier {s.name}"
    task_rules.check_trained_task(checkpoint.model_meta(s.model_dir, what), ec.task,
                                  f"{what} {s.model_dir}")
  if bool(ec.candidates) == bool(ec.policy):
    raise ValueError("give exactly one of --candidates FILE and --policy MODEL_DIR")
  if ec.policy and jax.process_count() > 1:
    raise ValueError("--policy samples candidates in a single process; with several processes, "
                     "sample them first (python -m genrm_jax.generate) and pass --candidates")
  res = None
  with files.atomic_dir(ec.out, overwrite=ec.overwrite) as tmp:
    cand_file = ec.candidates
    if ec.policy:
      gc = dataclasses.replace(gc or generate.GenerateConfig(), checkpoint=ec.policy,
                               task=ec.task, seed=ec.seed, mesh=ec.mesh)
      cand_file = os.path.join(tmp, "candidates.jsonl")
      cands.write_candidates(cand_file, generate.generate(gc, sc), require_gold=True)
    pools = cands.read_candidates(cand_file, require_gold=ec.require_gold, checker=task.check)
    scores = read_scores(ec.scores_file, pools) if ec.scores_file else {}
    probes = (probe_pools(pools, ec.task, ec.seed)
              if ec.probes and ec.task in word_puzzles.TASKS and specs else [])
    probe_scores = {}
    for spec in specs:
      both = score_shared(spec, [*pools, *probes], ec, opts)
      scores[spec.name] = Scored(**{f: getattr(both, f)[:len(pools)]
                                    for f in Scored.FIELDS if getattr(both, f) is not None})
      if probes:
        probe_scores[spec.name] = both.score[len(pools):]
    if distributed.is_main():
      diagnostics = verifier_diagnostics(pools, scores, probe_scores, probes,
                                         ec.calibration_bins)
      res = write_outputs(tmp, ec, specs, pools, scores, task, cand_file, t0, diagnostics,
                          solution_tokens(pools, _first_vocab(specs)))
  if res is None:
    return None
  print(format_table(res["best_of_n"]))
  if res["diagnostics"]:
    print(format_diagnostics(res["diagnostics"]))
  sizes = [len(p) for p in pools]
  if min(sizes) != max(sizes):
    print(f"note: pools hold {min(sizes)} to {max(sizes)} candidates; at N above a pool's size "
          "that problem uses its whole pool")
  for note in res["notes"]:
    print(f"note: {note}")
  print(f"wrote {ec.out}/results.json, best_of_n.png, scores.jsonl ({time.time() - t0:.1f}s)")
  return res


def main(argv: Sequence[str] | None = None) -> int:
  ap = argparse.ArgumentParser(prog="python -m genrm_jax.eval", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--task", choices=sorted(task_rules.TASKS))
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

  def run_command() -> None:
    distributed.initialize_from_flags(args)
    cli.parse_gin(args.gin_file, args.gin_bindings)
    ec = cli.configure(EvalConfig, task=args.task, candidates=args.candidates, out=args.out,
                       verifiers=tuple(args.verifier) if args.verifier else None,
                       scores_file=args.scores_file, cot_votes=args.cot_votes, seed=args.seed,
                       require_gold=args.require_gold, overwrite=args.overwrite,
                       policy=args.policy)
    gc = cli.configure(generate.GenerateConfig, num_samples=args.num_samples,
                       num_problems=args.num_problems, split=args.split,
                       data_file=args.data_file)
    if not ec.out:
      cli.fail("--out is required (as a flag or EvalConfig.out)")
    run(ec, cli.configure(SamplerConfig), gc)

  return cli.main(run_command)

if __name__ == "__main__":
  raise SystemExit(main())
