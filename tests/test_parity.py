"""The PyTorch-parity harness (``optax_neuronlr.parity``).

Every non-pending case runs in float64 and float32 and must keep its verdict; a
planted one-step difference must be caught, so the harness cannot pass
vacuously. The reference optimizers' documented behaviour (001 Example 3's
code, 004's scaled gradients) is pinned as well.
"""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from optax_neuronlr import parity
from optax_neuronlr.parity import __main__ as cli
from optax_neuronlr.parity import seed004
from optax_neuronlr.parity import torch_reference

STEPS = 50  # the CLI's default: reaches MultiStepLR's milestone 40 and a full cosine period


def _case_params():
  for name, case in parity.CASES.items():
    marks = [pytest.mark.skip(reason=f"pending: {case.note}")] if case.status == "pending" else []
    for dtype in parity.DTYPES:
      yield pytest.param(name, dtype, marks=marks, id=f"{name}-{dtype}")


@pytest.mark.parametrize("name,dtype", list(_case_params()))
def test_case_keeps_its_verdict(name, dtype):
  result = parity.run_case(parity.CASES[name], STEPS, (dtype,))
  assert result.ok, result.verdict
  assert not result.verdict.startswith("FAIL")
  if result.case.status == "exact":
    assert result.verdict.startswith("exact")
    assert result.diffs[dtype].max_rel <= parity.TOLERANCE[dtype]
  else:
    assert result.verdict.startswith("documented divergence: ")


def test_registry_covers_every_document_and_example():
  refs = " ".join(c.reference for c in parity.CASES.values())
  for seed, examples in (("000_9458a9ec8aeb2db5.txt", (1, 2, 3)),
                         ("001_3fa4abcb782b6d4d.txt", (1, 2, 3)),
                         ("004_07f92684a478e55a.txt", (1, 2))):
    for k in examples:
      assert f"{seed} Ex {k}" in refs
  for scheduler in ("LambdaLR", "StepLR", "MultiStepLR", "ExponentialLR",
                    "CosineAnnealingLR", "ReduceLROnPlateau", "param_groups[i]['lr']"):
    assert f"003_1efd0d2b8b3f8735.txt {scheduler}" in refs
  assert sum("002_72ce2b67b8956b45.txt" in c.reference for c in parity.CASES.values()) == 2
  statuses = {c.status for c in parity.CASES.values()}
  assert statuses <= {"exact", "divergence", "pending"}


# ---------------------------------------------------------------------------
# The harness cannot pass vacuously.


def _planted(case: parity.Case, at_update: int, factor: float) -> parity.Case:
  """``case`` with the JAX side's step scaled by ``factor`` at one update."""
  inner = case.jax_side.tx
  spike = optax.scale_by_schedule(lambda count: jnp.where(count == at_update, factor, 1.0))
  side = dataclasses.replace(case.jax_side, tx=lambda p: optax.chain(inner(p), spike))
  return dataclasses.replace(case, jax_side=side)


@pytest.mark.parametrize("name", ["000-ex3", "003-plateau"])
def test_planted_one_step_difference_is_caught(name):
  case = parity.CASES[name]
  assert case.status == "exact"
  result = parity.run_case(_planted(case, at_update=3, factor=1.5), 8)
  assert not result.ok
  assert result.verdict.startswith("FAIL: float64 max rel")
  assert "float32 max rel" in result.verdict
  for diff in result.diffs.values():
    assert diff.rel_by_step[2] <= 1e-5  # identical before the planted step...
    assert diff.first_step_over(1e-5) == 4  # ...and caught at it (update 3 = step 4)
  assert parity.exit_status([result]) == 1
  assert parity.exit_status([parity.run_case(case, 8)]) == 0


def test_planted_difference_on_the_reference_side_is_caught():
  case = parity.CASES["001-ex1"]

  def double_rate_at_step_6(k, optimizer):
    for group in optimizer.param_groups:
      group["lr"] = 0.02 if k == 5 else 0.01

  side = dataclasses.replace(case.reference_side, edit=double_rate_at_step_6)
  result = parity.run_case(dataclasses.replace(case, reference_side=side), 8, ("float64",))
  assert not result.ok
  assert result.diffs["float64"].first_step_over(1e-6) == 6


# ---------------------------------------------------------------------------
# Comparison and verdict logic.


def _diff(*rel):
  return parity.Diff(max_abs=max(rel), max_rel=max(rel), rel_by_step=tuple(rel))


def _case(status, note="", rtol=None):
  side = parity.JaxSide(lambda p: optax.sgd(0.1))
  return parity.Case("c", "ref", "ours", status, side, side, note=note, rtol=rtol)


def test_verdicts():
  ok = {"float64": _diff(1e-12, 1e-6), "float32": _diff(1e-5)}
  assert parity.judge(_case("exact"), ok) == ("exact", True)
  assert parity.judge(_case("exact", note="n"), ok) == ("exact (n)", True)
  assert parity.judge(_case("divergence", note="why"), ok) == ("documented divergence: why", True)
  verdict, good = parity.judge(_case("exact"), {"float64": _diff(0.0, 2e-6, 0.0)})
  assert not good
  assert verdict == "FAIL: float64 max rel 2.0e-06 > 1e-06 from step 2 [expected exact]"
  verdict, good = parity.judge(_case("exact"), {"float32": _diff(2e-5)})
  assert not good and "float32" in verdict
  verdict, good = parity.judge(_case("divergence", note="why", rtol=1e-2),
                               {"float64": _diff(5e-3), "float32": _diff(2e-2)})
  assert not good and verdict.endswith("[expected documented divergence: why]")
  assert parity.judge(_case("pending", note="issue 9"), {}) == ("pending (issue 9)", True)
  assert not parity.judge(_case("exact"), {"float64": _diff(math.nan)})[1]


def test_compare():
  ref = [{"w": np.array([1.0, -2.0]), "b": np.array([0.0])}]
  ours = [{"w": np.array([1.0, -2.002]), "b": np.array([1e-3])}]
  diff = parity.compare(ours, ref)
  assert diff.max_abs == pytest.approx(2e-3)
  assert diff.max_rel == pytest.approx(1e-3)  # w: 2e-3 / 2; b: its scale is 0, so 1e-3 absolute
  assert parity.compare(ref, ref).max_rel == 0.0
  nan = [{"w": np.array([np.nan, 1.0]), "b": np.array([0.0])}]
  assert parity.compare(nan, nan).max_rel == 0.0  # NaN where both are NaN is no difference
  assert parity.compare(nan, ref).max_rel == math.inf
  with pytest.raises(ValueError, match="length"):
    parity.compare(ours, ref * 2)


def test_case_validation():
  with pytest.raises(ValueError, match="needs both sides"):
    parity.Case("c", "r", "o", "exact")
  with pytest.raises(ValueError, match="needs a note"):
    _case("divergence")
  with pytest.raises(ValueError, match="unknown status"):
    _case("close")
  with pytest.raises(ValueError, match="loss must be"):
    parity.Problem(loss="hinge")


def test_problem_layout_and_identical_start():
  problem = parity.Problem()
  model = problem.torch_model("float64")
  start = parity.harness.to_flax(model)
  assert start["0"]["kernel"].shape == (8, 6) and start["2"]["bias"].shape == (3,)
  np.testing.assert_array_equal(start["0"]["kernel"], model[0].weight.detach().numpy().T)
  # The float64 model holds the float32 initial values exactly.
  f32 = parity.harness.to_flax(problem.torch_model("float32"))
  np.testing.assert_array_equal(start["2"]["kernel"], f32["2"]["kernel"])
  x, y = problem.data()
  out = model(torch.as_tensor(x)).detach().numpy()
  with jax.enable_x64(True):
    np.testing.assert_allclose(np.asarray(parity.harness.mlp_apply(start, x)), out, rtol=1e-12)


# ---------------------------------------------------------------------------
# What the reference documents' code does.


def test_001_ex3_code_divides_by_the_clipped_norm():
  """Large gradients pass unclipped (SGD at lr/clip_norm); small ones are
  normalised to a step of length lr. No Adam state is ever created."""
  lr, clip = 1e-2, 1.0
  for grad, want in ((torch.tensor([3.0, 4.0], dtype=torch.float64),
                      lambda g, n: -(lr / clip) * (1 + 1e-6 / n) * g),
                     (torch.tensor([0.03, 0.04], dtype=torch.float64),
                      lambda g, n: -lr * g / n)):
    p = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    opt = torch_reference.DivideByClippedNorm([p], lr=lr, clip_norm=clip)
    p.grad = grad.clone()
    opt.step()
    np.testing.assert_allclose(p.detach().numpy(), want(grad, grad.norm()).numpy(), rtol=1e-12)
    assert not opt.state[p]
  assert torch_reference.deprecated_addcdiv_matches()  # still runs on torch 2.13


def test_000_ex1_rates_grow_with_the_gradient():
  p = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
  opt = torch_reference.GradMagnitudeRate([p], lr=1e-3, alpha=0.01)
  p.grad = torch.tensor([1.0, 10.0], dtype=torch.float64)
  opt.step()
  np.testing.assert_allclose(opt.state[p]["rate"].numpy(), [1e-3 + 0.01, 1e-3 + 0.1])


def test_plateau_case_reduces_the_rate():
  case = parity.CASES["003-plateau"]
  rates = []
  side = dataclasses.replace(case.reference_side,
                             edit=lambda k, opt: rates.append(opt.param_groups[0]["lr"]))
  parity.trajectory(side, parity.Problem(), STEPS, "float64")
  assert rates[0] == pytest.approx(0.01)
  assert min(rates) <= 0.01 * 0.1 + 1e-12  # at least one reduction within the run


def test_seed004_scaling_before_adam_is_lost():
  toy = seed004.toy_problem()
  as_written = toy["ex2 scaled grads, one Adam (as written)"]
  unscaled = toy["one Adam(1e-3), no scaling"]
  intended = toy["ex1 separate Adams (intended)"]
  ours = toy["nlr: Adam, then scale_by_leaf"]
  for var in ("var1", "var2"):
    assert as_written[var] == pytest.approx(unscaled[var], abs=1e-4)
    assert ours[var] == pytest.approx(intended[var], abs=1e-5)
  assert as_written["var1"] > 0.89 and intended["var1"] < 0.3  # 100 steps of 1e-3 vs 1e-2
  assert "| ex1 separate Adams (intended) | 0.2244 |" in seed004.format_toy(toy)


# ---------------------------------------------------------------------------
# The command line.


def test_main_prints_the_table(capsys):
  assert cli.main(["--case", "001-ex1", "--case", "001-learned", "--steps", "5",
                   "--dtype", "float32"]) == 0
  out = capsys.readouterr().out
  assert "| case | reference | ours | steps | max abs diff (float32) |" in out
  assert "| 001-ex1 | 001_3fa4abcb782b6d4d.txt Ex 1 | optax.sgd(0.01) | 5 |" in out
  assert "| 001-learned |" in out and out.count("| exact") == 2
  assert "float64" not in out.split("\n")[2]


def test_exit_status_of_a_failing_table():
  good = parity.run_case(parity.CASES["001-ex1"], 3, ("float64",))
  bad = parity.run_case(_planted(parity.CASES["001-ex1"], 1, 2.0), 3, ("float64",))
  assert parity.exit_status([good]) == 0
  assert parity.exit_status([good, bad]) == 1
  pending = parity.run_case(parity.Case("p", "ref", "ours", "pending", note="issue 9"), 3)
  assert pending.ok and not pending.diffs
  assert parity.exit_status([good, pending]) == 0
  table = parity.format_table([good, bad, pending], ("float64",))
  assert table.count("\n") == 4 and "| FAIL: float64 max rel" in table
  assert table.endswith("| p | ref | ours | 3 | - | - | pending (issue 9) |")


@pytest.mark.parametrize("argv,message", [
    (["--case", "nope"], "argument --case: invalid choice: 'nope'"),
    (["--steps", "0"], "argument --steps: expected an integer >= 1, got 0"),
    (["--dtype", "float16"], "argument --dtype: invalid choice: 'float16'"),
])
def test_bad_arguments(argv, message, capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(argv)
  assert e.value.code == 2
  assert message in capsys.readouterr().err


def test_module_runs_and_torch_stays_optional(capsys):
  """``python -m optax_neuronlr.parity``'s main (run here: a process of its own
  would only add imports), and a process that imports the package without
  importing torch."""
  assert cli.main(["--case", "000-ex1", "--steps", "3"]) == 0
  out = capsys.readouterr().out
  assert "| 000-ex1 | 000_9458a9ec8aeb2db5.txt Ex 1 |" in out
  assert "| exact (" in out
  probe = "import sys, optax_neuronlr; assert 'torch' not in sys.modules"
  run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
  assert run.returncode == 0, run.stderr


def test_rows_print_in_the_readmes_order():
  """`python -m optax_neuronlr.parity` prints its rows in the order of the
  README's parity table (Adam-mini, which has a table of its own, last)."""
  import pathlib  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top
  from optax_neuronlr.parity import __main__ as parity_main  # pylint: disable=g-import-not-at-top
  readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
  table = readme[readme.index("PyTorch parity, 50 steps"):]
  table = table[:table.index("\n\n", table.index("| case |"))]
  rows = [r for r in re.findall(r"^\| ([\w-]+) \|", table, flags=re.M) if r not in ("case", "---")]
  assert rows[:3] == ["000-ex1", "000-ex2", "000-ex3"] and rows[-7:-5] == ["muon", "normuon"]
  assert list(parity_main.NAMES) == [*rows, "adam-mini"]
