"""Decoding and GenRM-CoT scoring speed: genrm-jax's sampler vs transformers' generate, one run.

    python benchmarks/bench_decode.py [--batches 1,8,32] [--prompt 32] [--new 64] [--reps 3]
        [--family gemma|gemma2|gemma3]

1. Greedy decoding of ``--new`` tokens after a ``--prompt``-token prompt at each batch size, with
   the ~10M-parameter Gemma (``config.bench_10m``): ``sampler.extend`` + ``sampler.decode`` vs
   ``model.generate`` of the same weights exported with ``genrm_jax.convert.export_hf`` (torch at
   1 and 2 threads, the faster reported; SDPA attention, its KV cache). Both sides run prefill + decode
   with EOS disabled, so they produce the same number of tokens; timings alternate between the
   sides and the median is reported, with the share of greedy tokens that agree (float noise can
   flip near-ties in a random model).
2. GenRM-CoT scoring of N=16 solutions of one question x K=8 rationales (``--cot_new`` tokens each,
   then p(Yes) after the verdict question), with and without prefix reuse (``share_prefix``): with
   it, the question prefix is prefilled once, each solution extends it, and its K rationales decode
   from that cache; without it, each of the 128 rows prefills the whole prompt. The two settings
   alternate, ``--cot_reps`` times each, and the medians are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import jax
import numpy as np

import harness
from families import FAMILIES, in_family
from genrm_jax import config, formats, sampler, scoring
from genrm_jax.convert import export_hf
from genrm_jax import model as model_lib
from genrm_jax import vocab as vocab_lib


# torch's OpenMP threads collapse when the 2 cores are shared with other work (seen here: 10x
# slower with 2 threads than 1 under load), so the peer is timed with both and its best is used.
THREADS = (1, 2)


def hf_model(cfg, params, tmp: str):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  path = export_hf.write_hf_dir(cfg, params, os.path.join(tmp, "hf"))
  # sdpa cannot soft-cap attention logits, so Gemma 2 runs eager, as transformers itself chooses.
  attn = "eager" if cfg.family == "gemma2" else "sdpa"
  return transformers.AutoModelForCausalLM.from_pretrained(
      path, dtype=torch.float32, attn_implementation=attn).eval()


def bench_decode(cfg, params, hf, batches, prompt_len: int, new: int, reps: int) -> None:
  import torch  # pylint: disable=g-import-not-at-top
  # EOS = an id the model never emits: every row decodes exactly ``new`` tokens on both sides.
  codec = sampler.Codec(encode=list, decode=str, eos_id=cfg.vocab_size)
  sc = config.SamplerConfig(max_new_tokens=new, temperature=0.0)
  rng = np.random.default_rng(0)
  print(f"greedy decode, prompt {prompt_len} + {new} new tokens, bench_10m/{cfg.family} "
        f"({model_lib.count_params(cfg) / 1e6:.2f}M params)")
  print(f"{'batch':>5} | {'genrm-jax tok/s':>15} | {'transformers tok/s':>18} | {'ratio':>5} | "
        f"greedy tokens equal")
  for b in batches:
    prompts = rng.integers(3, cfg.vocab_size, (b, prompt_len)).tolist()
    out = {}

    def ours():
      prefix, _ = sampler.extend(cfg, params, None, [0] * b, prompts)
      out["jax"] = [c.token_ids for c in sampler.decode(cfg, params, prefix, list(range(b)),
                                                         codec, sc, seed=0)]

    ids = torch.tensor(prompts)

    def theirs(threads):
      torch.set_num_threads(threads)
      with torch.no_grad():
        gen = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                          min_new_tokens=new, do_sample=False, eos_token_id=None,
                          pad_token_id=0)
      out["hf"] = gen[:, prompt_len:].tolist()

    t_jax, *t_threads = (t.wall for t in harness.time_interleaved(
        [ours] + [lambda n=n: theirs(n) for n in THREADS], reps))
    t_hf = min(t_threads)
    same = np.mean(np.asarray(out["jax"]) == np.asarray(out["hf"]))
    print(f"{b:>5} | {b * new / t_jax:>15.0f} | {b * new / t_hf:>18.0f} | "
          f"{t_hf / t_jax:>5.2f} | {same:.1%}   (torch {THREADS[t_threads.index(t_hf)]} thread(s);"
          f" {', '.join(f'{n}: {b * new / t:.0f}' for n, t in zip(THREADS, t_threads))} tok/s)")


def bench_cot(cfg, params, vocab, n: int, k: int, new: int, reps: int) -> None:
  question = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many "
              "clips in May. How many clips did Natalia sell altogether in April and May?")
  solutions = [f"In May she sold 48 / 2 = {24 + i} clips.\nAltogether 48 + {24 + i} = {72 + i}.\n"
               f"The answer is {72 + i}" for i in range(n)]
  rationale = config.SamplerConfig(max_new_tokens=new, temperature=0.7,
                                   stop_strings=(formats.VERDICT_QUESTION,))
  fns, seeds = [], {}
  for share in (True, False):
    opts = config.ScoringConfig(num_rationales=k, rationale=rationale, share_prefix=share,
                                max_rows=n * k)

    def run(o=opts, share=share):  # a new seed each call: new rationales, same shapes
      seeds[share] = seeds.get(share, -1) + 1
      scoring.score("genrm_cot", cfg, params, vocab, [question] * n, solutions, o,
                    seed=seeds[share])

    fns.append(run)
  t0 = time.perf_counter()
  for run in fns:  # the compiling calls
    run()
  print(f"  first calls (compile included): {time.perf_counter() - t0:.1f} s")
  timings = harness.time_interleaved(fns, reps, warmup=0)
  times = {}
  for share, t in zip((True, False), timings):
    times[share] = t.wall
    print(f"  prefix reuse {'on ' if share else 'off'}: {t.wall:.2f} s, median of "
          f"{' '.join(f'{x:.2f}' for x in t.walls)}")
  prompt = len(vocab.encode(formats.cot_prompt(question, solutions[0])))
  print(f"  -> prefix reuse is {times[False] / times[True]:.2f}x faster "
        f"(prompt {prompt} tokens, {n} x {k} rationales of up to {new} tokens)")


_GSM8K = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "gsm8k",
                      "train.jsonl")


def subword_vocab(tmp: str, size: int):
  """A Gemma-like subword SentencePiece (unigram, "▁Yes"/"▁No" single tokens, no dummy prefix).

  Trained on GSM8K when ../shared is there (else on the instruction alone), so prompts have a
  realistic token count (a character vocabulary would make them ~4x longer).
  """
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  texts = [formats.GSM8K_INSTRUCTION]
  if os.path.exists(_GSM8K):
    with open(_GSM8K) as f:
      texts += [json.loads(line)["question"] + "\n" + json.loads(line)["answer"] for line in f]
  path = os.path.join(tmp, "subword")
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(texts), model_prefix=path, model_type="unigram", vocab_size=size,
      hard_vocab_limit=False, user_defined_symbols=["▁Yes", "▁No", "\n"], pad_id=0, eos_id=1,
      bos_id=2, unk_id=3, add_dummy_prefix=False, remove_extra_whitespaces=False,
      normalization_rule_name="identity", byte_fallback=True, minloglevel=2)
  return vocab_lib.load_vocab(path + ".model")


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--batches", default="1,8,32")
  ap.add_argument("--prompt", type=int, default=32)
  ap.add_argument("--new", type=int, default=64)
  ap.add_argument("--reps", type=int, default=3)
  ap.add_argument("--cot_n", type=int, default=16)
  ap.add_argument("--cot_k", type=int, default=8)
  ap.add_argument("--cot_new", type=int, default=64)
  ap.add_argument("--cot_reps", type=int, default=3)
  ap.add_argument("--skip_hf", action="store_true", help="only time genrm-jax's CoT scoring")
  ap.add_argument("--family", default="gemma", choices=FAMILIES)
  args = ap.parse_args()
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs")
  with tempfile.TemporaryDirectory() as tmp, harness.reported_load():
    vocab = subword_vocab(tmp, config.bench_10m().vocab_size)
    cfg = in_family(config.bench_10m(vocab_size=vocab.vocab_size), args.family)
    params = model_lib.init_params(cfg, jax.random.key(0))
    if not args.skip_hf:
      bench_decode(cfg, params, hf_model(cfg, params, tmp),
                   [int(b) for b in args.batches.split(",")], args.prompt, args.new, args.reps)
    print(f"GenRM-CoT scoring, N={args.cot_n} solutions x K={args.cot_k} rationales "
          f"(subword vocabulary of {vocab.vocab_size}, GSM8K instruction)")
    bench_cot(cfg, params, vocab, args.cot_n, args.cot_k, args.cot_new, args.cot_reps)


if __name__ == "__main__":
  main()
