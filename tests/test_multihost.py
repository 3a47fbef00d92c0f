"""Multi-process training on one machine: 2 processes x 4 CPU devices = 1 process x 8 devices.

Both runs use the same (2 data, 2 fsdp, 2 tensor) mesh and synthetic data, so their loss curves
and parameters must agree; the 2-process run's checkpoint is then resumed by 1 process.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

WORKER = pathlib.Path(__file__).with_name("multihost_worker.py")
BINDINGS = [
    "model_config.preset='tiny'", "model_config.num_layers=2",
    "DataConfig.name='synthetic'", "DataConfig.seq_len=32",
    "TrainConfig.batch_size=8", "TrainConfig.checkpoint_every=4", "TrainConfig.log_every=1",
    "TrainConfig.tensorboard=False", "TrainConfig.mesh_fsdp=2", "TrainConfig.mesh_tensor=2",
    "OptimConfig.peak_lr=1e-3", "OptimConfig.warmup_steps=1", "OptimConfig.decay_steps=10",
]
TIMEOUT_S = 600


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(workdir, out, devices: int, steps: str, *extra: str) -> subprocess.Popen:
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu")
  cmd = [sys.executable, str(WORKER), f"--workdir={workdir}", f"--out={out}",
         f"--steps={steps}", *(f"--gin_bindings={b}" for b in BINDINGS), *extra]
  return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


def _wait(procs: list[subprocess.Popen]) -> None:
  logs = []
  try:
    for p in procs:
      logs.append(p.communicate(timeout=TIMEOUT_S)[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, log in zip(procs, logs):
    assert p.returncode == 0, f"worker failed ({p.returncode}):\n{log[-4000:]}"


def _load(out: pathlib.Path, steps: int):
  d = out / f"step{steps}"
  with np.load(d / "params.npz") as z:
    params = {k: z[k] for k in z.files}
  return json.loads((d / "run.json").read_text()), params


def _assert_same(run_a, params_a, run_b, params_b):
  for key in ("loss", "grad_norm"):
    a = [m[key] for m in run_a["history"]]
    b = [m[key] for m in run_b["history"]]
    np.testing.assert_allclose(a, b, rtol=1e-5, err_msg=key)
  assert params_a.keys() == params_b.keys()
  for k in params_a:
    np.testing.assert_allclose(params_a[k], params_b[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_two_processes_match_one_and_resume_with_another_count(tmp_path):
  port = _free_port()
  multi = [_start(tmp_path / "multi", tmp_path / "out_multi", 4, "4",
                  "--distributed=on", f"--coordinator_address=127.0.0.1:{port}",
                  "--num_processes=2", f"--process_id={i}") for i in range(2)]
  # The reference: one process, 8 devices, 4 steps, then resumed in-process to 6.
  single = _start(tmp_path / "single", tmp_path / "out_single", 8, "4,6")
  _wait(multi + [single])

  multi4, multi4_params = _load(tmp_path / "out_multi", 4)
  single4, single4_params = _load(tmp_path / "out_single", 4)
  assert (multi4["processes"], multi4["devices"]) == (2, 8)
  assert (single4["processes"], single4["devices"]) == (1, 8)
  assert len(multi4["history"]) == 4
  _assert_same(multi4, multi4_params, single4, single4_params)

  # The model directory both processes wrote together holds the final parameters.
  from genrm_jax import checkpoint, sharding  # pylint: disable=g-import-not-at-top
  _, stored, _ = checkpoint.load_model_dir(multi4["model_dir"], sharding.make_mesh())
  assert not list((tmp_path / "multi").glob(".model.tmp*"))
  np.testing.assert_array_equal(np.asarray(stored["embedder"]["input_embedding"]),
                                multi4_params["model/embedder/input_embedding"])

  # Resume the 2-process checkpoint with 1 process x 8 devices: steps 5 and 6 only.
  _wait([_start(tmp_path / "multi", tmp_path / "out_resumed", 8, "6", "--distributed=off")])
  resumed, resumed_params = _load(tmp_path / "out_resumed", 6)
  single6, single6_params = _load(tmp_path / "out_single", 6)
  assert len(resumed["history"]) == 2 and resumed["processes"] == 1
  _assert_same(resumed, resumed_params, single6, single6_params)


def test_missing_coordinator_is_a_clear_error(monkeypatch):
  from genrm_jax import distributed  # pylint: disable=g-import-not-at-top
  for name in ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "SLURM_NTASKS",
               "MEGASCALE_COORDINATOR_ADDRESS"):
    monkeypatch.delenv(name, raising=False)
  with pytest.raises(ValueError, match="no coordinator address"):
    distributed.initialize("auto", num_processes=2, process_id=0)
  assert distributed.initialize("auto") is False  # one process: nothing to join


def test_single_process_batch_shard_and_global_batch():
  import jax  # pylint: disable=g-import-not-at-top
  from genrm_jax import distributed, sharding  # pylint: disable=g-import-not-at-top
  mesh = sharding.make_mesh(2, 2, 2)
  assert distributed.batch_shard(mesh, 8) == distributed.BatchShard(0, 1, 8)
  local = {"inputs": np.arange(32, dtype=np.int32).reshape(8, 4),
           "labels": np.arange(8, dtype=np.float32)}
  out = distributed.global_batch(local, mesh)
  assert out["inputs"].sharding == sharding.batch_sharding(mesh, 2)
  host = distributed.to_host(out)
  np.testing.assert_array_equal(host["inputs"], local["inputs"])
  np.testing.assert_array_equal(host["labels"], local["labels"])
  assert jax.process_count() == 1
