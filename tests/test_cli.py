"""genrm_jax.cli: gin files and bindings, configs from gin and flags, and one error face for every
command (run as a user would, in a subprocess: one ``error:`` line, status 2, no traceback)."""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import subprocess
import sys

import gin
import pytest

from genrm_jax import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class _Cfg:
  a: int = 1
  b: str = "x"


def test_gin_files_are_found_in_gin_configs_and_flags_win_over_bindings(tmp_path):
  assert cli.gin_path("pipeline/quick.gin") == os.path.join(cli.GIN_DIR, "pipeline", "quick.gin")
  own = tmp_path / "own.gin"
  own.write_text("_Cfg.a = 5\n")
  assert cli.gin_path(str(own)) == str(own)
  cli.register(_Cfg)
  try:
    cli.parse_gin([str(own)], ["_Cfg.b = 'y'"])
    assert cli.configure(_Cfg) == _Cfg(5, "y")
    assert cli.configure(_Cfg, a=7, b=None) == _Cfg(7, "y")  # None: the flag was not given
    cli.parse_gin([], [])  # a command line is one configuration: the earlier one is gone
    assert cli.configure(_Cfg) == _Cfg()
  finally:
    gin.clear_config()


@dataclasses.dataclass(frozen=True)
class _Typed:
  seed: int | None = None
  rate: float = 1.0
  flag: bool = False
  lengths: tuple[int, ...] = (2, 3)
  pair: tuple[str, float] = ("a", 1.0)


@pytest.mark.parametrize("binding, ok", [
    ("_Typed.seed = 3", True), ("_Typed.seed = None", True), ("_Typed.seed = '3'", False),
    ("_Typed.seed = True", False), ("_Typed.seed = 2.5", False),
    ("_Typed.rate = 2", True), ("_Typed.rate = 'fast'", False),
    ("_Typed.flag = 1", False), ("_Typed.lengths = [4, 5]", True),
    ("_Typed.lengths = (4, 'x')", False), ("_Typed.lengths = 4", False),
    ("_Typed.pair = ('b', 2)", True), ("_Typed.pair = ('b',)", False)])
def test_a_binding_of_the_wrong_type_names_its_field(binding, ok):
  cli.register(_Typed)
  try:
    cli.parse_gin([], [binding])
    if ok:
      cli.configure(_Typed)
    else:
      field = binding.split("=")[0].strip()
      with pytest.raises(ValueError, match=rf"^{field} = .*: expected "):
        cli.configure(_Typed)
  finally:
    gin.clear_config()


def test_an_include_found_in_gin_configs_logs_no_error(tmp_path, caplog):
  from genrm_jax import train  # noqa: F401  (registers the configs verifier_lm.gin binds)
  own = tmp_path / "own.gin"
  own.write_text("include 'pipeline/verifier_lm.gin'\n")
  with caplog.at_level(logging.INFO):
    cli.parse_gin([str(own)], [])
  gin.clear_config()
  assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
  assert cli._not_gin_package_probe not in logging.getLogger().filters  # only while parsing
  missing = tmp_path / "missing.gin"
  missing.write_text("include 'pipeline/no_such_file.gin'\n")
  with pytest.raises(Exception, match="no_such_file"):
    cli.parse_gin([str(missing)], [])


def test_bad_gin_input_is_one_line_naming_it():
  with pytest.raises(FileNotFoundError, match="gin file nope.gin does not exist"):
    cli.parse_gin(["nope.gin"], [])
  cli.register(_Cfg)
  with pytest.raises(ValueError) as e:
    cli.parse_gin([], ["_Cfg.c = 3"])
  gin.clear_config()
  assert "\n" not in str(e.value) and "'c'" in str(e.value) and "_Cfg.c = 3" in str(e.value)


def test_int_tuple_and_mesh():
  assert cli.int_tuple("--lengths", "2,3") == (2, 3) and cli.int_tuple("--lengths", None) is None
  assert cli.int_tuple("--mesh", "-1,1,1", minimum=-1) == (-1, 1, 1)
  for text in ("2,x", "0,2"):
    with pytest.raises(SystemExit) as e:
      cli.int_tuple("--lengths", text)
    assert e.value.code == cli.EXIT_USAGE
  assert cli.mesh(()) is None
  assert dict(cli.mesh((-1, 2, 1)).shape) == {"data": 4, "fsdp": 2, "tensor": 1}  # 8 devices


def test_main_turns_user_errors_into_one_line(capsys):
  def missing():
    open("/nonexistent/x.json")  # pylint: disable=consider-using-with
  for body, want in ((missing, "error: No such file or directory: /nonexistent/x.json"),
                     (lambda: int("x"), "error: invalid literal for int()")):
    with pytest.raises(SystemExit) as e:
      cli.main(body)
    assert e.value.code == 2 and capsys.readouterr().err.startswith(want)
  assert cli.main(lambda: None) == 0
  with pytest.raises(KeyError):  # a bug keeps its traceback
    cli.main(lambda: {}["k"])


COMMANDS = [
    (["genrm_jax.eval", "--task", "gsm8k", "--candidates", "{cands}", "--out", "{tmp}/o",
      "--verifier", "x=/nonexistent/v:direct"],
     "verifier x /nonexistent/v: the directory does not exist"),
    (["genrm_jax.convert.import_model", "--hf_dir", "/nonexistent/hf", "--out", "{tmp}/m"],
     "/nonexistent/hf"),
    (["genrm_jax.convert.export_hf", "--checkpoint", "/nonexistent/m", "--out", "{tmp}/hf"],
     "model directory /nonexistent/m does not exist"),
    (["genrm_jax.generate", "--checkpoint", "/nonexistent/p", "--task", "last_letters",
      "--num_problems", "1", "--out", "{tmp}/c.jsonl"],
     "policy checkpoint /nonexistent/p: the directory does not exist"),
    (["genrm_jax.train", "--gin_file", "tiny.gin", "--gin_file", "nope.gin", "--workdir",
      "{tmp}/w"], "gin file nope.gin does not exist"),
    (["genrm_jax.candidates", "check", "/nonexistent/c.jsonl"],
     "candidates file /nonexistent/c.jsonl does not exist"),
    (["genrm_jax.gsm8k_release", "build-cot", "--data_collection", "/nonexistent",
      "--out", "{tmp}/cot.jsonl"], "/nonexistent"),
    (["genrm_jax.pipeline", "--gin_file", "nope.gin"], "gin file nope.gin does not exist"),
]


@pytest.mark.parametrize("argv,message", COMMANDS,
                         ids=[c[0][0].removeprefix("genrm_jax.") for c in COMMANDS])
def test_every_command_fails_with_one_error_line(tmp_path, argv, message):
  cands = tmp_path / "c.jsonl"
  cands.write_text('{"question_id": 1, "question": "q", "solution": "s", "correct": true, '
                   '"extracted_answer": "1"}\n')
  argv = [a.format(tmp=tmp_path, cands=cands) for a in argv]
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  r = subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True,
                     timeout=300, env={**env, "PYTHONPATH": str(ROOT)})
  assert r.returncode == 2, r.stderr
  assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
  assert message in r.stderr
  assert not [p for p in tmp_path.iterdir() if p.name != "c.jsonl"]  # nothing written
