"""The README's commands stay true: every ``python -m genrm_jax...`` it names answers ``--help``,
and its CPU smoke run (no data folder, no cloud) runs as written."""

from __future__ import annotations

import os
import pathlib
import re
import shlex
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
_SMOKE_WORKDIR = "--workdir=/tmp/smoke"



def _env() -> dict[str, str]:
  return {**os.environ, "PYTHONPATH": str(ROOT)}


def readme_modules() -> list[str]:
  code = "\n".join(re.findall(r"^```bash\n(.*?)^```", README, re.S | re.M))
  return sorted(set(re.findall(r"python -m (genrm_jax(?:\.\w+)*)", code)))


def test_readme_names_its_commands():
  mods = readme_modules()
  assert {"genrm_jax.pipeline", "genrm_jax.train", "genrm_jax.eval", "genrm_jax.serve"} <= set(mods)


def test_every_readme_command_answers_help(tmp_path):
  # One interpreter a command: each registers its configurables under __main__.
  procs = {mod: subprocess.Popen([sys.executable, "-m", mod, "--help"], cwd=tmp_path, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
           for mod in readme_modules()}
  for mod, p in procs.items():
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0 and out.startswith("usage:"), (mod, err[-3000:])
    assert err == "", (mod, err)  # no library log line at start-up


def test_readme_cpu_smoke_run_runs_as_written(tmp_path):
  line = next(l for l in README.splitlines()
              if l.startswith("python -m genrm_jax.train") and _SMOKE_WORKDIR in l)
  argv = shlex.split(line.replace(_SMOKE_WORKDIR, f"--workdir={tmp_path / 'smoke'}"))
  r = subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, capture_output=True, text=True,
                     timeout=600, env=_env())
  assert r.returncode == 0, r.stderr[-3000:]
  assert (tmp_path / "smoke" / "model").is_dir(), r.stdout[-2000:]
  assert "step 40/40" in r.stdout
