"""Input-pipeline throughput on the released GSM8K verification data (packed LM batches).

Measures ``genrm_jax.data.get_batches`` ("ours": seqio tokenization + numpy packing) and, as the
peer in the same run, seqio's own ``PrefixLMFeatureConverter(pack=True)`` on the same task,
vocabulary and row length. Prints examples/s and real tokens/s (wall clock, and per CPU-second of
the process, which stays comparable on a shared, loaded machine), row fill, and the ratio; the
two sides read alternating blocks of batches and each figure is the median block.

    python benchmarks/bench_input.py --data_dir ../shared/data [--vocab gemma.model]

Without ``--vocab`` a 8k-piece unigram SentencePiece vocabulary is trained on 5,000 of the records
(Gemma's tokenizer is not available offline), which gives token counts of the right order.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

import harness


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data_dir", default=os.path.join(os.path.dirname(__file__), "..", "..",
                                                         "shared", "data"))
  parser.add_argument("--task", default="gsm8k_verify")
  parser.add_argument("--vocab", default=None, help="a SentencePiece .model (default: train one)")
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--seq_len", type=int, default=1024)
  parser.add_argument("--batches", type=int, default=25, help="batches per timed block")
  parser.add_argument("--reps", type=int, default=4, help="alternating blocks per side")
  args = parser.parse_args()

  import seqio  # pylint: disable=g-import-not-at-top
  import tasks  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  from genrm_jax import data  # pylint: disable=g-import-not-at-top
  from genrm_jax import gsm8k_release  # pylint: disable=g-import-not-at-top
  from genrm_jax import records  # pylint: disable=g-import-not-at-top
  from genrm_jax import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  from tasks import gsm8k as gsm8k_tasks  # pylint: disable=g-import-not-at-top

  gsm8k_tasks.register_gsm8k(data_dir=os.path.abspath(args.data_dir))
  t0 = time.perf_counter()
  cands = gsm8k_release.read_rm(os.path.join(os.path.abspath(args.data_dir), "genrm-critiques"))
  print(f"read {len(cands)} released rm records in {time.perf_counter() - t0:.1f} s")
  if args.vocab:
    vocab = vocab_lib.load_vocab(args.vocab)
  else:
    t0 = time.perf_counter()
    texts = [r["inputs"] + r["targets"] for r in records.verify(cands[::33], "")]
    vocab = vocab_lib.train_vocab(texts, os.path.join(tempfile.mkdtemp(), "bench.model"),
                                  "unigram", 8000)
    print(f"trained an 8k unigram vocabulary in {time.perf_counter() - t0:.1f} s")
  mean_len = np.mean([len(vocab.encode(r["inputs"] + r["targets"]))
                      for r in records.verify(cands[:2000], "x")])
  print(f"vocab {vocab.vocab_size} pieces; ~{mean_len:.0f} tokens per verification example")

  def counter(it, count_tokens, totals):
    """One block of ``--batches`` batches from the open iterator ``it``."""
    def block():
      for _ in range(args.batches):
        tok, ex = count_tokens(next(it))
        totals[0] += tok
        totals[1] += ex
    return block

  def ours_counts(b):
    sid = b["segment_ids"]
    return int((sid > 0).sum()), int(sum(len(np.unique(r[r > 0])) for r in sid))

  def peer_iterator():
    with vocab_lib.using(vocab):
      ds = seqio.get_dataset(
          args.task, task_feature_lengths={"inputs": args.seq_len - 8, "targets": 8},
          dataset_split="train", shuffle=True, num_epochs=None, seed=0, batch_size=args.batch_size,
          feature_converter=seqio.PrefixLMFeatureConverter(pack=True, loss_on_targets_only=True))
    return ds.as_numpy_iterator()

  def peer_counts(b):
    sid = b["decoder_segment_ids"]
    return int((sid > 0).sum()), int(sum(len(np.unique(r[r > 0])) for r in sid))

  sides = {"ours": (lambda: data.get_batches(args.task, "train", batch_size=args.batch_size,
                                             seq_len=args.seq_len, seed=0, vocab=vocab),
                    ours_counts),
           "seqio": (peer_iterator, peer_counts)}
  blocks, totals = [], {}
  for name, (make_iterator, count_tokens) in sides.items():
    t0 = time.perf_counter()
    it = make_iterator()
    next(it)
    print(f"{name:>8}: startup + first batch {time.perf_counter() - t0:5.1f} s")
    totals[name] = [0, 0]
    blocks.append(counter(it, count_tokens, totals[name]))
  with harness.reported_load():
    timings = harness.time_interleaved(blocks, args.reps, warmup=0)
  rate = {}
  for (name, t) in zip(sides, timings):
    tok, ex = (x / args.reps for x in totals[name])  # per block
    rate[name] = (ex / t.cpu, tok / t.cpu)
    print(f"{name:>8}: {ex / t.wall:6.0f} examples/s {tok / t.wall:8.0f} tokens/s (wall); "
          f"{ex / t.cpu:6.0f} examples/s {tok / t.cpu:8.0f} tokens/s per CPU-second; rows "
          f"{tok / (args.batches * args.batch_size * args.seq_len):.1%} full (median of "
          f"{args.reps} alternating blocks of {args.batches} batches)")
  ours, peer = rate["ours"], rate["seqio"]
  print(f"ratio ours/seqio per CPU-second: {ours[0] / peer[0]:.2f}x examples, "
        f"{ours[1] / peer[1]:.2f}x tokens (seqio's packer truncates silently; ours drops "
        "over-long verdict examples and counts them)")


if __name__ == "__main__":
  main()
