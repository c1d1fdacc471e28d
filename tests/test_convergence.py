"""``benchmarks/convergence.py``: a smoke test of the protocol, then its parts.

One quick study (digits, a few methods, 2 grid rates, 2 refinement rates, 2
seeds, 20 steps; two user methods through ``--method-from``) and one tiny width
sweep (two widths, Muon) run once each and are shared by the tests of
this module; everything else (statistics, grids, the command line's checks,
every built-in method's optimizer) is tested without training. The study's code
is the package ``benchmarks/convergence_study``; the tests import its modules as
the script does (``benchmarks/`` on the path). No test writes into the committed
results (``benchmarks/results/``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "convergence.py"
HEADER = ("task,steps,method,schedule,rate,mean,std,seeds,bytes_per_param,steps_to_target,"
          "verdict,p_value")

if str(SCRIPT.parent) not in sys.path:
  sys.path.insert(0, str(SCRIPT.parent))
# pylint: disable=g-import-not-at-top,wrong-import-position
from convergence_study import (cli, methods, outputs, protocol, run as run_lib, settings,
                               stats, tasks, width)

COMMITTED = settings.RESULTS  # the committed full study: no test may write there
QUICK_METHODS = "^nadamw$|^adamw$|^muon adam_ratio$|^adam_hd$"


def committed_files() -> dict[str, str]:
  """Every file directly in the committed results folder, by name, with its digest."""
  return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(COMMITTED.glob("*")) if p.is_file()}


COMMITTED_AT_IMPORT = committed_files()


def run(*args: str, cwd=None, ok: bool = True) -> subprocess.CompletedProcess:
  result = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True,
                          text=True, timeout=600, check=False, cwd=cwd)
  if ok:
    assert result.returncode == 0, result.stderr[-3000:]
  return result


@pytest.fixture(scope="module")
def study(tmp_path_factory):
  """The quick study on digits, with a user method from a file (named with ``=``) and
  one from a module importable from the working directory."""
  base = tmp_path_factory.mktemp("convergence")
  out = base / "out"
  (base / "my_file_method.py").write_text(
      "import optax\n\ndef make_tx(learning_rate):\n  return optax.adam(learning_rate)\n")
  (base / "my_module_method.py").write_text(
      "import optax\n\ndef make_tx(learning_rate):\n"
      "  return optax.sgd(learning_rate, momentum=0.9)\n")
  run("--quick", "--tasks", "^digits$", "--methods", QUICK_METHODS, "--method-from",
      str(base / "my_file_method.py") + ":make_tx=my adam", "--method-from",
      "my_module_method:make_tx", "--grid", "1e-3", "1", "--out", str(out), cwd=base)
  return out, json.loads((out / "convergence.json").read_text())


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
  out = tmp_path_factory.mktemp("width")
  run("--quick", "--widths", "8", "16", "--methods", "^muon$", "--out", str(out))
  return out, json.loads((out / "width.json").read_text())


def finite(x) -> bool:
  return isinstance(x, (int, float)) and math.isfinite(x)


def read_csv(path: pathlib.Path) -> list[dict[str, str]]:
  assert path.read_text().splitlines()[0] == HEADER
  with path.open(newline="") as f:
    return list(csv.DictReader(f))


def test_quick_study(study):
  """Every chosen method ran (NAdamW the target), its numbers finite, its tuning as the
  protocol says (a joint ratio grid for ``muon adam_ratio``), the refinement around the
  grid's best; the user methods kept their names."""
  out, data = study
  digits = data["tasks"]["digits"]
  assert not digits["errors"], digits["errors"]
  assert set(digits["methods"]) == {"nadamw", "adamw", "muon adam_ratio", "adam_hd",
                                    "my adam", "make_tx"}
  assert digits["target"]["method"] == "nadamw" and finite(digits["target"]["test_loss"])
  for key, m in digits["methods"].items():
    s = m["summary"]
    assert finite(s["rate"]) and finite(s["test_loss_mean"]) and finite(s["val_loss_mean"])
    assert s["verdict"] in ({"target"} if key == "nadamw" else {"win", "tie", "loss"}), key
    if key != "nadamw":
      assert 0 <= s["p_value"] <= s["p_holm"] <= 1, key
    assert len(m["seeds"]) == 2 and all("test_loss" in r["final"] for r in m["seeds"])
    ratios = m["ratios"]
    assert len(m["grid"]) == 2 * len(ratios), key
    assert {r["ratio"] for r in m["grid"]} == set(ratios), key
    grid = [r for r in m["grid"] if r["ratio"] == s["ratio"] and not r["failed"]]
    best = min(grid, key=lambda r: r["final"]["val_loss"])["rate"]
    assert [r["rate"] for r in m["refine"]] == protocol.refined_rates(best, settings.REFINE)
  assert digits["methods"]["muon adam_ratio"]["ratios"] == list(settings.RATIOS)
  assert [r["rate"] for r in digits["methods"]["make_tx"]["grid"]] == [0.01, 0.0316]
  rows = read_csv(out / "summary.csv")
  assert {r["method"] for r in rows} == set(digits["methods"])
  for row in rows:
    s = digits["methods"][row["method"]]["summary"]
    assert math.isclose(float(row["mean"]), s["test_loss_mean"], rel_tol=1e-5)
    assert row["verdict"] == s["verdict"]
    assert (row["p_value"] == "") == (row["method"] == "nadamw")
  table = (out / "convergence.md").read_text()
  for key in digits["methods"]:
    assert f"| {key} |" in table
  for figure in ("curves_digits.png", "rates_digits.png"):
    assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_merge_and_replot(study, tmp_path):
  """``--merge`` adds another process's methods to a task; ``--replot`` rebuilds the
  same tables from the JSON."""
  out = tmp_path / "out"
  data = json.loads((study[0] / "convergence.json").read_text())
  part = json.loads(json.dumps(data))
  part["tasks"]["digits"]["methods"] = {"adam_hd": part["tasks"]["digits"]["methods"].pop(
      "adam_hd")}
  base = json.loads(json.dumps(data))
  del base["tasks"]["digits"]["methods"]["adam_hd"]
  merged = outputs.merge_study(base, part)
  assert set(merged["tasks"]["digits"]["methods"]) == set(data["tasks"]["digits"]["methods"])
  outputs.write_outputs(data, out)
  before = (out / "summary.csv").read_bytes()
  (out / "summary.csv").unlink()
  run("--replot", "--out", str(out))
  assert (out / "summary.csv").read_bytes() == before


def test_width_sweep(sweep):
  out, data = sweep
  assert set(data["widths"]) == {"8", "16"}
  rows = list(csv.DictReader((out / "width.csv").open()))
  assert list(rows[0]) == list(settings.WIDTH_COLUMNS)
  assert {(r["method"], r["width"]) for r in rows} == {("muon", w) for w in ("8", "16")}
  for r in rows:
    entry = data["widths"][r["width"]]["methods"][r["method"]]
    assert float(r["best_rate"]) in entry["rates"]
    assert finite(float(r["best_loss"])) and finite(float(r["drift_decades"]))
    if r["width"] == "8":
      assert r["loss_at_small_rate"] == r["best_loss"]
  assert (out / "width.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert "| muon |" in (out / "width.md").read_text()


def test_width_drift_and_rows():
  """Drift: decades of best rate per doubling; the loss at the small width's rate."""
  assert width.drift([32, 64, 128], [1e-2, 10**-2.5, 1e-3]) == pytest.approx(-0.5)
  entry = lambda best: {"rates": [1e-3, 1e-2, 1e-1],
                        "val": [[3.0 if i != best else 2.0 for i in range(3)]],
                        "test": [[3.1 if i != best else 2.1 for i in range(3)]],
                        "failed": [[False] * 3]}
  sweep = {"widths": {"32": {"methods": {"m": entry(2)}}, "64": {"methods": {"m": entry(1)}}}}
  rows = width.width_rows(sweep)
  assert [(r["width"], r["best_rate"], r["loss_at_small_rate"]) for r in rows] == [
      (32, 0.1, "2.1"), (64, 0.01, "3.1")]
  assert float(rows[0]["drift_decades"]) == pytest.approx(-1.0)


def test_welch_against_a_restated_formula():
  """t, Welch-Satterthwaite df and the two-sided p of a worked example."""
  a = np.array([0.0, 1.0, 2.0, 3.0])
  b = np.array([1.0, 3.0, 5.0, 7.0, 9.0])
  t, df, p = stats.welch(a, b)
  va, vb = a.var(ddof=1) / 4, b.var(ddof=1) / 5
  assert t == pytest.approx((1.5 - 5.0) / math.sqrt(va + vb))
  assert df == pytest.approx((va + vb) ** 2 / (va**2 / 3 + vb**2 / 4))
  assert df == pytest.approx(5.5208, abs=1e-4)
  # The two-sided tail of Student's t density with df degrees of freedom, integrated.
  x = np.linspace(abs(t), abs(t) + 400.0, 2_000_001)
  density = (math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))
             * (1 + x**2 / df) ** (-(df + 1) / 2))
  tail = float(np.sum((density[1:] + density[:-1]) / 2 * np.diff(x)))
  assert p == pytest.approx(2 * tail, rel=1e-3)
  assert 0.06 < p < 0.08
  assert stats.welch(np.ones(3), np.ones(3))[2] == 1.0


def test_holm():
  assert stats.holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
  assert stats.holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])
  assert stats.holm([0.8, 0.02]) == pytest.approx([0.8, 0.04])
  assert stats.holm([]) == []


def test_verdicts_are_holm_corrected():
  """Three methods against the target: the one whose raw p is below 0.05 but whose Holm
  p is not is a tie."""
  rng = np.random.default_rng(0)
  seeds = lambda values: [{"failed": False, "final": {"test_loss": float(v)},
                           "val_curve": {"loss": [3.0, float(v)]}} for v in values]
  method = lambda values: {"seeds": seeds(values), "summary": {
      "state_bytes_per_param": 8.0, "ms_per_step": 1.0, "test_loss_mean": float(np.mean(values))}}
  base = 2.0 + 0.01 * rng.standard_normal(7)
  small = base.mean() + 0.017 + 0.01 * rng.standard_normal(7)  # Welch's p = 0.034
  task = {"eval_steps": [0, 100], "methods": {
      "nadamw": method(base), "big": method(base - 0.2), "small": method(small),
      "same": method(base + 1e-4 * rng.standard_normal(7))}}
  stats.finalise_task(task)
  s = {k: m["summary"] for k, m in task["methods"].items()}
  assert s["nadamw"]["verdict"] == "target" and s["big"]["verdict"] == "win"
  assert s["same"]["verdict"] == "tie"
  assert s["small"]["p_value"] < 0.05 < s["small"]["p_holm"]  # significant alone, not after Holm
  assert s["small"]["verdict"] == "tie"
  for k in ("big", "small", "same"):
    assert s[k]["p_holm"] >= s[k]["p_value"]
    assert (s[k]["verdict"] != "tie") == (s[k]["p_holm"] < settings.ALPHA)


def test_steps_to_target_interpolates_to_one_percent():
  m = {"seeds": [{"val_curve": {"loss": [4.0, 3.0, 2.0, 1.0]}}]}
  steps = [0, 100, 200, 300]
  assert stats.steps_to(m, steps, 2.5) == 150
  assert stats.steps_to(m, steps, 2.97) == 105  # 103, rounded up to 1% of 300 (3 steps)
  assert stats.steps_to(m, steps, 0.5) is None
  assert stats.steps_to(m, steps, 1.0) == 300


def test_grid_extension_and_sensitivity():
  grid = protocol.rate_grid("adam", settings.GRID_POINTS)
  assert protocol.edge_side(grid[0], grid) == -1 and protocol.edge_side(grid[-1], grid) == 1
  assert protocol.edge_side(grid[3], grid) == 0
  assert protocol.extended_rates(grid, 1) == [0.316, 1.0]
  assert protocol.extended_rates(grid, -1) == [3.16e-05, 1e-05]
  with pytest.raises(ValueError, match="same loss"):
    protocol.check_sensitive("m", np.array([2.0, 2.0, 2.0]), np.zeros(3, bool))
  protocol.check_sensitive("m", np.array([2.0, 2.1, np.nan]), np.array([False, False, True]))


def quadratic_problem(steps: int = 30) -> tasks.Problem:
  """A tiny least-squares problem with a hidden matrix and a bias."""
  x = jax.random.normal(jax.random.key(0), (64, 6))
  y = x @ jax.random.normal(jax.random.key(1), (6, 3))
  init = lambda key: {"hidden": {"kernel": 0.1 * jax.random.normal(key, (6, 3))},
                      "out": {"bias": jnp.zeros(3)}}
  loss = lambda p, batch: jnp.mean((batch[0] @ p["hidden"]["kernel"] + p["out"]["bias"]
                                    - batch[1]) ** 2)
  return tasks.Problem(init, loss, lambda p, s: {"loss": loss(p, s)}, None, tasks.rows,
                       {"train": (x, y)}, steps=steps, head=None, description="")


def final_loss(method: methods.Method, peak: float, problem: tasks.Problem) -> float:
  p = problem.init(jax.random.key(2))
  tx = method.optimizer(peak, 1.0, problem)
  state = tx.init(p)
  for _ in range(problem.steps):
    g = jax.grad(problem.loss)(p, problem.data["train"])
    u, state = tx.update(g, state, p)
    p = optax.apply_updates(p, u)
  return float(problem.loss(p, problem.data["train"]))


def test_adam_hd_grid_tunes_its_rate():
  """The tuned number of Adam-HD is its initial learned rate: two peaks, two runs. (Its
  rate given the warm-up schedule itself starts at 0 whatever the peak: one run.)"""
  problem = quadratic_problem()
  (hd,) = [m for m in methods.builtin_methods() if m.key == "adam_hd"]
  assert final_loss(hd, 1e-3, problem) != final_loss(hd, 1e-2, problem)
  import optax_neuronlr as nlr
  old = methods.Method("old", "", lambda r: nlr.adam_hd(r.lr, 1e-7), "adam", "")
  assert final_loss(old, 1e-3, problem) == final_loss(old, 1e-2, problem)


@pytest.mark.filterwarnings("ignore:scale_sgd found no output head")
def test_every_builtin_method_builds():
  """Every available built-in's optimizer initialises and updates on a tree with a
  hidden matrix and a bias (shapes only; no training)."""
  problem = quadratic_problem()
  params = jax.eval_shape(problem.init, jax.random.key(0))
  keys = [m.key for m in methods.builtin_methods()]
  assert len(keys) == len(set(keys))
  assert keys[0] == settings.REFERENCE
  for m in methods.builtin_methods():
    if not m.available():
      continue
    tx = m.optimizer(jnp.float32(1e-3), jnp.float32(1.0), problem)
    state = jax.eval_shape(tx.init, params)
    updates, _ = jax.eval_shape(tx.update, params, state, params)
    assert jax.tree.structure(updates) == jax.tree.structure(params), m.key


def test_command_line_checks(tmp_path):
  """A flag that selects nothing, ``--grid`` without a method, and two methods of one
  name stop before anything runs; ``--method-from`` writes to a scratch folder."""
  for argv in (["--grid", "1e-3", "1"], ["--methods", "no_such_method"],
               ["--tasks", "no_such_task"]):
    with pytest.raises(SystemExit):
      cli.parse_args(argv)
  (tmp_path / "one.py").write_text("import optax\ndef make_tx(lr):\n  return optax.sgd(lr)\n")
  (tmp_path / "two.py").write_text("import optax\ndef make_tx(lr):\n  return optax.adam(lr)\n")
  specs = [f"{tmp_path / 'one.py'}:make_tx", f"{tmp_path / 'two.py'}:make_tx"]
  builtins = methods.builtin_methods()
  with pytest.raises(ValueError, match="make_tx.*taken"):
    cli.user_methods(specs, None, builtins)
  named = cli.user_methods([specs[0], specs[1] + "=adam_two"], None, builtins)
  assert [m.key for m in named] == ["make_tx", "adam_two"]
  with pytest.raises(ValueError, match="taken"):  # a built-in's name, given explicitly
    cli.user_methods([f"{tmp_path / 'one.py'}:make_tx=adamw"], None, builtins)
  assert cli.parse_args(["--method-from", specs[0]]).out == settings.USER_RESULTS
  assert cli.parse_args(["--method-from", specs[0], "--methods", "none"]).methods == "none"
  assert cli.parse_args([]).out == COMMITTED
  assert cli.parse_args(["--quick"]).out == settings.QUICK_RESULTS
  assert cli.parse_args(["--out", "elsewhere"]).out == pathlib.Path("elsewhere")


def test_user_methods_run_on_every_task():
  """The long run (``char_lm_x3``, its ``only`` list) takes the ``--method-from`` methods."""
  user = methods.Method("mine", settings.USER, lambda r: optax.sgd(r.lr), "adam", "")
  (long_task,) = [t for t in tasks.TASKS if t.name == "char_lm_x3"]
  chosen = run_lib.task_methods(long_task, methods.builtin_methods() + [user])
  assert "mine" in [m.key for m in chosen]
  assert {m.key for m in chosen} == set(settings.LONG_METHODS) | {"mine"}


def test_schedule_is_warmup_cosine():
  steps, peak = 600, 3e-3
  ours = protocol.learning_rate(peak, "warmup_cosine", steps)
  theirs = optax.warmup_cosine_decay_schedule(0.0, peak, steps // 10, steps, 0.1 * peak)
  for count in (0, 1, 30, 60, 61, 300, 599, 600):
    assert math.isclose(float(ours(count)), float(theirs(count)), rel_tol=1e-5, abs_tol=1e-12)
  assert protocol.learning_rate(peak, "constant", steps) == peak


def test_char_lm_splits_are_disjoint():
  """The rate is picked on the held-out text's first half, the score taken on its second."""
  example = tasks.load_example("char_lm")
  corpus = example.load_corpus()
  c = example.Config(**{k: v for k, v in tasks.CHAR_LM_SIZES.items()})
  val, test = tasks.held_out_splits(corpus.val, example, c)
  half = len(corpus.val) // 2
  assert test.shape == (tasks.TEST_WINDOWS, c.seq_len + 1)
  np.testing.assert_array_equal(test[0], corpus.val[half:half + c.seq_len + 1])
  first = corpus.val[:half].tobytes()
  assert all(w.astype(corpus.val.dtype).tobytes() in first for w in val[:5])


def test_rates_figure_of_fixed_rate_methods_only(tmp_path):
  """A task whose only method runs at a fixed rate (no grid) still gets its figure."""
  from convergence_study import plots  # pylint: disable=g-import-not-at-top
  study = json.loads((COMMITTED / "convergence.json").read_text())
  task = study["tasks"]["char_lm"]
  fixed = {k: m for k, m in task["methods"].items() if m.get("fixed_rate") is not None}
  assert fixed, "the committed study has a fixed-rate method"
  task["methods"] = fixed
  plots.plot_rates("char_lm", task, tmp_path / "rates.png")
  assert (tmp_path / "rates.png").stat().st_size > 0


def test_committed_results_untouched():
  assert committed_files() == COMMITTED_AT_IMPORT
