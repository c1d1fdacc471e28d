"""``benchmarks/convergence.py --quick``: every task x method runs, its numbers, its files.

One quick study (2 grid rates, 2 refinement rates, 2 seeds, a few steps per task
and method; a few minutes on 2 CPU cores) is shared by the tests of this module;
a user's method then runs through the same protocol on one task, merged into a
copy of it. The study's code is the package ``benchmarks/convergence_study``; the
tests import its modules as the script does (``benchmarks/`` on the path). No
test writes into the committed results (``benchmarks/results/``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import optax
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "convergence.py"
HEADER = "task,steps,method,schedule,rate,mean,std,seeds,bytes_per_param,steps_to_target,verdict"

if str(SCRIPT.parent) not in sys.path:
  sys.path.insert(0, str(SCRIPT.parent))
# pylint: disable=g-import-not-at-top,wrong-import-position
from convergence_study import cli, methods, protocol, settings, tasks

COMMITTED = settings.RESULTS  # the committed full study: no test may write there


def committed_files() -> dict[str, str]:
  """Every file directly in the committed results folder, by name, with its digest."""
  return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(COMMITTED.glob("*")) if p.is_file()}


COMMITTED_AT_IMPORT = committed_files()


def run(*args: str, cwd=None) -> subprocess.CompletedProcess:
  result = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True,
                          text=True, timeout=900, check=False, cwd=cwd)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


@pytest.fixture(scope="module")
def study(tmp_path_factory):
  out = tmp_path_factory.mktemp("convergence")
  run("--quick", "--out", str(out))
  return out, json.loads((out / "convergence.json").read_text())


@pytest.fixture(scope="module")
def user_study(study, tmp_path_factory):
  """A copy of the quick study, with two user methods run on digits into it: one
  from a file path, one from a module importable from the working directory."""
  base = tmp_path_factory.mktemp("user")
  out = base / "out"
  shutil.copytree(study[0], out)
  (base / "my_file_method.py").write_text(
      "import optax\n\ndef make_tx(learning_rate):\n  return optax.adam(learning_rate)\n")
  (base / "my_module_method.py").write_text(
      "import optax\n\ndef make_sgd(learning_rate):\n"
      "  return optax.sgd(learning_rate, momentum=0.9)\n")
  run("--quick", "--tasks", "^digits$", "--methods", "none", "--method-from",
      str(base / "my_file_method.py") + ":make_tx", "--method-from",
      "my_module_method:make_sgd", "--grid", "1e-3", "1", "--out", str(out), cwd=base)
  return out, json.loads((out / "convergence.json").read_text())


def finite(x) -> bool:
  return isinstance(x, (int, float)) and math.isfinite(x)


def read_csv(path: pathlib.Path) -> list[dict[str, str]]:
  assert path.read_text().splitlines()[0] == HEADER
  with path.open(newline="") as f:
    return list(csv.DictReader(f))


def expected_methods(task) -> set[str]:
  return {m.key for m in methods.builtin_methods() if m.available()
          and (task.only is None or m.key in task.only)}


def test_every_task_and_method(study):
  _, data = study
  assert set(data["tasks"]) == {t.name for t in tasks.TASKS}
  for task in tasks.TASKS:
    entry = data["tasks"][task.name]
    assert "unavailable" not in entry, (task.name, entry.get("unavailable"))
    assert not entry["errors"], (task.name, entry["errors"])
    assert set(entry["methods"]) == expected_methods(task), task.name
    if task.only is None:
      assert len(entry["methods"]) >= 24, task.name
  assert data["tasks"]["char_lm_x3"]["steps"] == 3 * data["tasks"]["char_lm"]["steps"]


def test_numbers_are_finite(study):
  """Every summary number is finite; a score may be missing only for a failed run."""
  _, data = study
  assert data["config"]["quick"] and data["config"]["grid_points"] == 2
  for name, task in data["tasks"].items():
    assert task["target"]["method"] == "adamw", name
    assert finite(task["target"]["val_loss"]), name
    evals = len(task["eval_steps"])
    for method, m in task["methods"].items():
      s = m["summary"]
      where = f"{name}/{method}"
      assert finite(s["rate"]) and s["rate"] > 0, where
      assert finite(s["state_bytes_per_param"]) and s["state_bytes_per_param"] >= 0, where
      assert finite(s["ms_per_step"]) and s["ms_per_step"] > 0, where
      assert s["seeds_failed"] > 0 or finite(s["val_loss_mean"]), where
      assert s["steps_to_target"] is None or 0 <= s["steps_to_target"] <= task["steps"], where
      if task["metric"] and not s["seeds_failed"]:
        assert finite(s[f"val_{task['metric']}_mean"]), where
      assert len(m["grid"]) == 2 and len(m["refine"]) == 2 and len(m["seeds"]) == 2, where
      assert s["grid_points"] == 4, where
      tuned = [run["rate"] for run in m["grid"] + m["refine"]]
      assert s["rate"] in tuned, where
      for run in m["grid"] + m["refine"] + m["seeds"]:
        assert len(run["val_curve"]["loss"]) == evals, where
        assert run["failed"] or finite(run["final"]["val_loss"]), where
      if m["family"].startswith("reference 000"):
        assert 0 <= s["at_min_lr"] <= 1 and 0 <= s["at_max_lr"] <= 1, where


def test_refinement_is_around_the_grid_best(study):
  _, data = study
  for name, task in data["tasks"].items():
    for method, m in task["methods"].items():
      grid = [run for run in m["grid"] if not run["failed"]]
      if not grid:
        continue
      best = min(grid, key=lambda run: run["final"]["val_loss"])["rate"]
      assert [run["rate"] for run in m["refine"]] == protocol.refined_rates(best,
                                                                             settings.REFINE)


def test_summary_csv(study):
  out, data = study
  rows = read_csv(out / "summary.csv")
  keys = [(r["task"], r["steps"], r["method"], r["schedule"]) for r in rows]
  assert len(keys) == len(set(keys))
  assert len(rows) == sum(len(t["methods"]) for t in data["tasks"].values())
  assert {r["task"] for r in rows} == {"digits", "rnn", "char_lm"}
  assert {r["schedule"] for r in rows} == set(settings.SCHEDULES)
  steps = {r["steps"] for r in rows if r["task"] == "char_lm"}
  assert steps == {str(data["tasks"]["char_lm"]["steps"]),
                   str(data["tasks"]["char_lm_x3"]["steps"])}
  for key, task in data["tasks"].items():
    ref = task["methods"]["adamw"]
    ref_log = np.mean(np.log([run["final"]["val_loss"] for run in ref["seeds"]]))
    for m in task["methods"].values():
      (row,) = [r for r in rows if (r["task"], r["steps"], r["method"], r["schedule"])
                == (task["task"], str(task["steps"]), m["method"], m["schedule"])]
      s = m["summary"]
      where = f"{key}/{m['method']}/{m['schedule']}"
      assert float(row["rate"]) == s["rate"], where
      assert int(row["seeds"]) == len(m["seeds"]), where
      assert math.isclose(float(row["bytes_per_param"]), s["state_bytes_per_param"],
                          rel_tol=1e-3), where
      assert row["steps_to_target"] == ("" if s["steps_to_target"] is None
                                        else str(s["steps_to_target"])), where
      if row["mean"]:
        assert math.isclose(float(row["mean"]), s["val_loss_mean"]), where
      verdict = row["verdict"]
      if m["method"] == "adamw" and m["schedule"] == "warmup_cosine":
        assert verdict == "target" and row["steps_to_target"] == str(task["steps"]), where
        continue
      assert verdict in ("win", "tie", "loss", "fails"), where
      if verdict == "fails":
        assert any(run["failed"] for run in m["seeds"]), where
        continue
      log = np.mean(np.log([run["final"]["val_loss"] for run in m["seeds"]]))
      if verdict == "win":
        assert log < ref_log, where
      elif verdict == "loss":
        assert log > ref_log, where


def test_files(study):
  out, data = study
  table = (out / "convergence.md").read_text()
  assert "warmup_cosine_decay_schedule(0.0, peak, steps // 10, steps, 0.1 * peak)" in table
  assert "10^-0.25" in table and "x 10^0.25" in table
  for name, task in data["tasks"].items():
    for method in task["methods"]:
      assert f"| {method} |" in table, method
    for figure in (f"curves_{name}.png", f"rates_{name}.png"):
      assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", figure


def test_missing_names_are_listed_not_run(study):
  """Methods whose ``nlr`` names are missing (Muon's, until they land) are listed."""
  out, data = study
  muon_family = {m.key for m in methods.builtin_methods() if m.family == settings.MUON
                 or m.name.endswith(" x muon")}
  assert len(muon_family) == 8
  missing = {m.key for m in methods.builtin_methods() if not m.available()}
  assert missing == set(data["config"]["unavailable_methods"])
  table = (out / "convergence.md").read_text()
  for key in missing:
    assert key in table and all(key not in t["methods"] for t in data["tasks"].values())
  fake = methods.Method("fake", settings.BASELINE, lambda r: optax.adam(r.lr), "adam", "",
                        requires=("no_such_name_in_nlr",))
  assert not fake.available() and fake.missing() == ["no_such_name_in_nlr"]


def test_method_from_merges(study, user_study):
  """Two user methods ran on digits into a copy of the study: everything else kept."""
  old, new = study[1], user_study[1]
  assert set(new["tasks"]) == set(old["tasks"])
  for name in old["tasks"]:
    if name != "digits":
      assert new["tasks"][name] == old["tasks"][name], name
  digits = new["tasks"]["digits"]
  assert set(digits["methods"]) == set(old["tasks"]["digits"]["methods"]) | {"make_tx",
                                                                             "make_sgd"}
  assert digits["methods"]["adamw"] == old["tasks"]["digits"]["methods"]["adamw"]  # reused
  sgd = digits["methods"]["make_sgd"]
  assert [run["rate"] for run in sgd["grid"]] == [0.01, 0.0316]  # --grid 1e-3 1: central 2
  rows = read_csv(user_study[0] / "summary.csv")
  assert len(rows) == len(read_csv(study[0] / "summary.csv")) + 2
  for method in ("make_tx", "make_sgd"):
    (row,) = [r for r in rows if r["method"] == method]
    assert row["task"] == "digits" and row["schedule"] == "warmup_cosine"
    assert row["verdict"] in ("win", "tie", "loss", "fails")
    assert f"| {method} |" in (user_study[0] / "convergence.md").read_text()


def test_replot_rebuilds_everything(user_study, tmp_path):
  out = tmp_path / "out"
  shutil.copytree(user_study[0], out)
  rebuilt = ("summary.csv", "convergence.md", "curves_rnn.png", "rates_digits.png")
  before = {name: (out / name).read_bytes() for name in rebuilt}
  for name in rebuilt:
    (out / name).unlink()
  run("--replot", "--out", str(out))
  for name in ("summary.csv", "convergence.md"):
    assert (out / name).read_bytes() == before[name], name
  for name in rebuilt[2:]:
    assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_schedule_is_warmup_cosine():
  steps, peak = 600, 3e-3
  ours = protocol.learning_rate(peak, "warmup_cosine", steps)
  theirs = optax.warmup_cosine_decay_schedule(0.0, peak, steps // 10, steps, 0.1 * peak)
  for count in (0, 1, 30, 60, 61, 300, 599, 600):
    assert math.isclose(float(ours(count)), float(theirs(count)), rel_tol=1e-5, abs_tol=1e-12)
  assert protocol.learning_rate(peak, "constant", steps) == peak


def test_grids_are_log_spaced():
  for kind in settings.RATE_RANGES:
    grid = protocol.rate_grid(kind, settings.GRID_POINTS)
    assert len(grid) >= 5
    ratios = [b / a for a, b in zip(grid, grid[1:])]
    assert all(abs(r - 10**0.5) < 0.01 for r in ratios), (kind, grid)
  assert protocol.refined_rates(1e-3, settings.REFINE) == [0.000562, 0.00178]


def git(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)


def in_git_checkout() -> bool:
  try:
    return git("rev-parse", "--is-inside-work-tree").stdout.strip() == "true"
  except OSError:  # no git
    return False


def test_quick_default_out_is_not_the_committed_study():
  """Without ``--out`` the full study writes to the committed results and ``--quick`` to
  ``benchmarks/results/quick/``; ``--out`` wins."""
  assert cli.parse_args([]).out == COMMITTED
  assert cli.parse_args(["--replot"]).out == COMMITTED
  quick = cli.parse_args(["--quick"]).out
  assert quick == settings.QUICK_RESULTS == COMMITTED / "quick"
  assert cli.parse_args(["--quick", "--replot"]).out == quick
  assert cli.parse_args(["--quick", "--out", "elsewhere"]).out == pathlib.Path("elsewhere")
  assert cli.parse_args(["--out", "elsewhere"]).out == pathlib.Path("elsewhere")


@pytest.mark.skipif(not in_git_checkout(), reason="not a git checkout")
def test_quick_study_leaves_git_status_clean():
  """``--quick`` as the README runs it (no ``--out``; here one task and one method, to be
  short) writes into ``benchmarks/results/quick/``, which git ignores: ``git status`` is
  as before and the committed results are byte for byte the same."""
  status = ["status", "--porcelain", "--untracked-files=all", "--ignored=no"]
  before = git(*status).stdout
  run("--quick", "--tasks", "^digits$", "--methods", "^adamw$")
  written = settings.QUICK_RESULTS / "convergence.json"
  assert json.loads(written.read_text())["tasks"]["digits"]["methods"]["adamw"]
  assert git("check-ignore", "-q", str(written)).returncode == 0
  assert git(*status).stdout == before
  assert committed_files() == COMMITTED_AT_IMPORT


def test_committed_results_untouched():
  """No test of this module (the quick study, the user methods, the re-plot) wrote into
  the committed results: every file there as when the module was imported."""
  assert committed_files() == COMMITTED_AT_IMPORT
