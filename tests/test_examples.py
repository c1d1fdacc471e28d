"""The README's main job runs end to end (a short configuration)."""

from __future__ import annotations

import inspect
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_quick(script: str, tmp_path, monkeypatch, capsys) -> str:
  """Runs ``examples/<script> --quick`` (its ``main``, in this process: a process
  of its own would only add seconds of imports); checks the figure; returns
  what it printed."""
  out = tmp_path / "figure.png"
  module = load_example(script[:-3])
  monkeypatch.setattr(sys, "argv", [script, "--quick", "--out", str(out)])
  capsys.readouterr()
  module.main()
  assert out.stat().st_size > 10_000
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  return capsys.readouterr().out


def test_compare_strategies_quick(tmp_path, monkeypatch, capsys):
  stdout = run_quick("compare_strategies.py", tmp_path, monkeypatch, capsys)
  assert "test acc" in stdout
  for name in ("normuon lr=0.02", "adam_mini lr=1e-3", "adam lr=1e-3", "grad_magnitude_lr",
               "grad_history_lr"):
    assert name in stdout
  # The recommended optimizers come first, the reference-000 rules after.
  assert stdout.index("normuon lr=0.02") < stdout.index("grad_magnitude_lr")


def test_examples_write_figures_into_results_by_default():
  """The default --out of every example is results/<script>.png (git-ignored)."""
  for script in SCRIPTS:
    text = (ROOT / "examples" / script).read_text()
    assert f'default=_cli.default_figure("{script[:-3]}.png")' in text, script
    assert '.png",' not in text.replace("default_figure(", ""), script
  assert "/results/" in (ROOT / ".gitignore").read_text().split()


def test_hypergradient_digits_quick(tmp_path, monkeypatch, capsys):
  stdout = run_quick("hypergradient_digits.py", tmp_path, monkeypatch, capsys)
  assert "sgd-hd" in stdout and "adam-hd" in stdout


def test_rnn_time_series_quick(tmp_path, monkeypatch, capsys):
  stdout = run_quick("rnn_time_series.py", tmp_path, monkeypatch, capsys)
  assert "sign_consistency_lr" in stdout


def test_transfer_learning_quick(tmp_path, monkeypatch, capsys):
  stdout = run_quick("transfer_learning.py", tmp_path, monkeypatch, capsys)
  assert "global rate" in stdout


def test_linen_train_state_quick(tmp_path, monkeypatch, capsys):
  stdout = run_quick("linen_train_state.py", tmp_path, monkeypatch, capsys)
  assert "Dense_0/kernel" in stdout


def test_char_lm_quick(tmp_path, monkeypatch, capsys):
  stdout = run_quick("char_lm.py", tmp_path, monkeypatch, capsys)
  assert "val loss" in stdout and "ms/step" in stdout
  for name in ("adamw", "adam_mini", "scale_sgd"):
    assert name in stdout


def test_char_lm_is_importable():
  """The model and data code that a longer study reuses."""
  lm = load_example("char_lm")
  corpus = lm.load_corpus()
  assert len(corpus.val) > 0.05 * len(corpus.train) and corpus.vocab_size > 60
  batches = lm.make_batches(corpus.train, 2, 3, 8, seed=0)
  assert batches.shape == (2, 3, 9) and batches.max() < corpus.vocab_size
  import warnings  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  model = nnx.eval_shape(lambda: lm.CharTransformer(lm.QUICK, corpus.vocab_size, nnx.Rngs(0)))
  params = nnx.state(model, nnx.Param)
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # Adam-mini recognises every leaf of the model
    for method in lm.METHODS:
      jax.eval_shape(lm.optimizer(method, 1e-3, lm.QUICK).init, params)


def load_example(name: str):
  """Imports ``examples/<name>.py`` as a module (its ``main`` does not run)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  if f"examples.{name}" in sys.modules:
    return sys.modules[f"examples.{name}"]
  spec = importlib.util.spec_from_file_location(
      f"examples.{name}", ROOT / "examples" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up there.
  spec.loader.exec_module(module)
  return module


def test_hypergradient_digits_arguments(tmp_path, capsys):
  """Bad arguments are argparse errors (exit 2, no traceback), before any training."""
  import pytest  # pylint: disable=g-import-not-at-top
  hd = load_example("hypergradient_digits")
  out = str(tmp_path / "f.png")
  for argv, message in (
      (["--beta-scale", "inf"], "argument --beta-scale: must be a finite number > 0"),
      (["--beta-scale", "nan"], "argument --beta-scale: must be a finite number > 0"),
      (["--beta-scale", "-1"], "argument --beta-scale: must be a finite number > 0"),
      (["--beta-scale", "x"], "argument --beta-scale: must be a number, got 'x'"),
      (["--epochs", "0"], "argument --epochs: must be at least 1"),
      (["--epochs", "1.5"], "argument --epochs: must be an integer"),
      (["--out", str(tmp_path / "missing" / "f.png")], "does not exist"),
      (["--out", str(tmp_path)], "is a directory"),
      (["--out", str(tmp_path / "f.xyz")], "cannot write '.xyz' files"),
  ):
    with pytest.raises(SystemExit) as e:
      hd.parse_args(argv if "--out" in argv else [*argv, "--out", out])
    assert e.value.code == 2
    assert message in capsys.readouterr().err, argv
  args = hd.parse_args(["--quick", "--beta-scale", "10", "--out", out])
  assert args.beta_scale == 10.0


def test_hypergradient_digits_quick_keeps_beta_scale():
  hd = load_example("hypergradient_digits")
  quick = [r.name for r in hd.runs(True, None)]
  assert quick == ["sgd", "sgd-hd", "adam", "adam-hd"]
  scaled = [r.name for r in hd.runs(True, 10.0)]
  assert scaled == ["sgd", "sgd-hd", "sgd-hd (beta x10)", "adam", "adam-hd",
                    "adam-hd (beta x10)"]
  run = next(r for r in hd.runs(True, 10.0) if r.name == "adam-hd (beta x10)")
  assert run.hyper_lr == hd.BETA_ADAM * 10.0


def test_hypergradient_digits_inf_beta_scale_is_a_usage_error(tmp_path):
  result = subprocess.run(
      [sys.executable, str(ROOT / "examples" / "hypergradient_digits.py"),
       "--beta-scale", "inf", "--out", str(tmp_path / "f.png")],
      capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 2
  assert "Traceback" not in result.stderr
  assert "must be a finite number > 0" in result.stderr


def test_add_param_group_quick(tmp_path, monkeypatch, capsys):
  stdout = run_quick("add_param_group.py", tmp_path, monkeypatch, capsys)
  assert "identical bit for bit: PASS" in stdout
  assert "rebuild {'backbone': 60, 'head': 60, 'head2': 0}" in stdout
  assert "fresh optimizer {'backbone': 0, 'head': 0, 'head2': 0}" in stdout
  for name in ("rebuild (kept)", "fresh optimizer", "head2/kernel", "test acc"):
    assert name in stdout


SCRIPTS = sorted(p.name for p in (ROOT / "examples").glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_bad_out_is_a_usage_error_before_training(script, tmp_path, monkeypatch, capsys):
  """Every example checks --out when it parses its arguments: exit status 2,
  argparse's message naming --out, before any training (its ``main`` parses
  first; the other bad paths are tested through hypergradient_digits' parser
  above, and one example's whole process, traceback-free, by
  test_hypergradient_digits_inf_beta_scale_is_a_usage_error)."""
  module = load_example(script[:-3])
  main_source = inspect.getsource(module.main)
  body = [line.strip() for line in main_source.splitlines()[1:]
          if line.strip() and not line.strip().startswith(('"""', "#"))]
  assert body[0].startswith("args = parse_args("), (script, body[0])
  out = tmp_path / "missing" / "f.png"
  monkeypatch.setattr(sys, "argv", [script, "--quick", "--out", str(out)])
  with pytest.raises(SystemExit) as e:
    module.parse_args()
  assert e.value.code == 2, script
  err = capsys.readouterr().err
  assert "does not exist" in err and "--out" in err, err
  assert not out.parent.exists()
