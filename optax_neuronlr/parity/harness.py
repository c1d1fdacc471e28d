"""The parity harness: one model, one data set, a PyTorch side and a JAX side.

A `Case` pairs a *reference* side (PyTorch code restating a reference
document, or, for the TensorFlow document 004, its recipe in optax) with the
*JAX* side that claims to do the same, plus metadata: the document and example,
and the expected verdict. `run_case` trains both sides from identical
initial parameters on identical data, with the real loss and real gradients
(``loss.backward()`` on one side, ``jax.grad`` on the other), for ``steps``
steps, and compares the parameters after every step.

The model is ``torch.nn.Sequential(Linear(8, 6), ReLU(), Linear(6, 3))``,
initialised by PyTorch from a fixed seed; the JAX side holds the same values in
Flax layout, ``{"0": {"kernel": W.T, "bias": b}, "2": {...}}`` (PyTorch's
``(out, in)`` weights transposed to Flax's ``(in, out)`` kernels). Both sides
run in float64 (``torch.float64``; ``jax.enable_x64``) and in float32.

Differences, over all steps and tensors: ``max abs`` is the largest
``|ours - reference|`` of any element; ``max rel`` is the largest
``max|ours - reference| / max|reference|`` of any tensor, i.e. the difference
relative to the tensor's largest entry (elementwise ratios would blow up on
entries that happen to be near zero).

Verdicts: ``exact`` when ``max rel <= 1e-6`` in float64 and ``<= 1e-5`` in
float32; ``documented divergence`` when the reference document's code does not
do what its text says (the row states why; the numbers are still checked against
the tolerance the case declares); ``pending`` when the JAX side is not built
yet. A checked row whose numbers exceed its tolerance is a ``FAIL``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

DTYPES = ("float64", "float32")
TOLERANCE = {"float64": 1e-6, "float32": 1e-5}
Status = Literal["exact", "divergence", "pending"]
Trajectory = list[dict[str, np.ndarray]]

TORCH_DTYPES = {"float64": torch.float64, "float32": torch.float32}


# ---------------------------------------------------------------------------
# The problem: model, data, loss.


@dataclasses.dataclass(frozen=True)
class Problem:
  """A small MLP on fixed random data, the same for both sides.

  Attributes:
    loss: ``"mse"`` (regression targets) or ``"cross_entropy"`` (class labels).
    sizes: layer widths, input first.
    batch: number of examples.
    seed: seeds PyTorch's initialisation and the data.
  """

  loss: str = "mse"
  sizes: tuple[int, ...] = (8, 6, 3)
  batch: int = 16
  seed: int = 0

  def __post_init__(self):
    if self.loss not in ("mse", "cross_entropy"):
      raise ValueError(f"loss must be 'mse' or 'cross_entropy', got {self.loss!r}.")

  def torch_model(self, dtype: str) -> torch.nn.Sequential:
    """PyTorch's default initialisation from ``seed``, cast to ``dtype``."""
    layers: list[torch.nn.Module] = []
    with torch.random.fork_rng(devices=[]):
      torch.manual_seed(self.seed)
      for i, (n_in, n_out) in enumerate(zip(self.sizes[:-1], self.sizes[1:])):
        if i:
          layers.append(torch.nn.ReLU())
        layers.append(torch.nn.Linear(n_in, n_out))
    return torch.nn.Sequential(*layers).to(TORCH_DTYPES[dtype])

  def data(self) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and targets (float64 regression targets or int64 labels)."""
    rng = np.random.default_rng(self.seed + 1)
    x = rng.normal(size=(self.batch, self.sizes[0]))
    if self.loss == "mse":
      return x, rng.normal(size=(self.batch, self.sizes[-1]))
    return x, rng.integers(0, self.sizes[-1], size=self.batch)

  def validation_data(self) -> tuple[np.ndarray, np.ndarray]:
    """Held-out inputs and targets, for a monitored validation loss."""
    return dataclasses.replace(self, seed=self.seed + 100).data()

  def torch_loss(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if self.loss == "mse":
      return torch.nn.functional.mse_loss(outputs, target)
    return torch.nn.functional.cross_entropy(outputs, target)

  def jax_loss(self, params: Mapping[str, Any], x: jax.Array, target: jax.Array) -> jax.Array:
    outputs = mlp_apply(params, x)
    if self.loss == "mse":
      return jnp.mean((outputs - target) ** 2)
    return optax.softmax_cross_entropy_with_integer_labels(outputs, target).mean()


def to_flax(model: torch.nn.Sequential) -> dict[str, dict[str, np.ndarray]]:
  """``{"<index>": {"kernel": W.T, "bias": b}}`` for each ``Linear`` of ``model``."""
  return {
      str(i): {"kernel": layer.weight.detach().numpy().T.copy(),
               "bias": layer.bias.detach().numpy().copy()}
      for i, layer in enumerate(model) if isinstance(layer, torch.nn.Linear)
  }


def mlp_apply(params: Mapping[str, Any], x: jax.Array) -> jax.Array:
  """The Flax-layout twin of the PyTorch MLP: dense layers with ReLU between."""
  names = sorted(params, key=int)
  for i, name in enumerate(names):
    x = x @ params[name]["kernel"] + params[name]["bias"]
    if i < len(names) - 1:
      x = jax.nn.relu(x)
  return x


def flat_params(params: Mapping[str, Mapping[str, Any]]) -> dict[str, np.ndarray]:
  return {f"{layer}/{name}": np.asarray(value, np.float64)
          for layer, leaves in params.items() for name, value in leaves.items()}


# ---------------------------------------------------------------------------
# The two kinds of side.


@dataclasses.dataclass(frozen=True)
class TorchSide:
  """A PyTorch training loop: ``zero_grad; loss.backward(); step; scheduler``.

  Attributes:
    optimizer: ``model -> optimizer`` (anything with ``zero_grad``, ``step``
      and ``param_groups``).
    scheduler: optional ``optimizer -> lr_scheduler``, stepped after every
      optimizer step.
    monitor: pass the validation loss to ``scheduler.step`` (for
      ``ReduceLROnPlateau``); it is the loss on `Problem.validation_data`
      of the parameters the step starts from.
    edit: optional ``(step, optimizer) -> None`` run before each step (manual
      ``param_groups[i]['lr']`` changes).
    report: optional ``(optimizer, scheduler) -> {name: number}`` read after
      each step (e.g. ``scheduler.get_last_lr()``); compared, like a tensor,
      with what the JAX side's ``report`` gives under the same names.
  """

  optimizer: Callable[[torch.nn.Sequential], Any]
  scheduler: Optional[Callable[[Any], Any]] = None
  monitor: bool = False
  edit: Optional[Callable[[int, Any], None]] = None
  report: Optional[Callable[[Any, Any], Mapping[str, Any]]] = None


@dataclasses.dataclass(frozen=True)
class JaxSide:
  """A jitted optax loop: ``jax.value_and_grad``, ``tx.update``, ``apply_updates``.

  Attributes:
    tx: ``params -> optax transform`` (params are given for builders that need
      them, e.g. ``nlr.layerwise_multipliers``).
    monitor: pass the validation loss as ``tx.update(..., value=...)``, as
      `TorchSide` does.
    edit: optional ``(step, opt_state) -> opt_state`` run before each step.
    report: optional ``opt_state -> {name: number}`` read after each step
      (e.g. ``nlr.plateau_learning_rate``), as `TorchSide`'s.
  """

  tx: Callable[[Any], optax.GradientTransformation]
  monitor: bool = False
  edit: Optional[Callable[[int, Any], Any]] = None
  report: Optional[Callable[[Any], Mapping[str, Any]]] = None


Side = Union[TorchSide, JaxSide]


@dataclasses.dataclass(frozen=True)
class Case:
  """One row of the parity table.

  Attributes:
    name: short identifier, e.g. ``"000-ex1"``.
    reference: the document and example, e.g. ``"000_9458a9ec8aeb2db5.txt Ex 1"``.
    ours: what the JAX side is, in a few words.
    status: ``"exact"``, ``"divergence"`` (documented) or ``"pending"``.
    reference_side: the reference implementation (None when pending).
    jax_side: our implementation (None when pending).
    note: for ``exact``, a remark shown with the verdict; for ``divergence``,
      the reason; for ``pending``, the issue that adds the JAX side.
    loss: the problem's loss, ``"mse"`` or ``"cross_entropy"``.
    rtol: the tolerance on ``max rel``, in both dtypes; None means
      `TOLERANCE`.
  """

  name: str
  reference: str
  ours: str
  status: Status
  reference_side: Optional[Side] = None
  jax_side: Optional[Side] = None
  note: str = ""
  loss: str = "mse"
  rtol: Optional[float] = None

  def __post_init__(self):
    if self.status not in ("exact", "divergence", "pending"):
      raise ValueError(f"case {self.name}: unknown status {self.status!r}.")
    if self.status != "pending" and (self.reference_side is None or self.jax_side is None):
      raise ValueError(f"case {self.name}: a {self.status} case needs both sides.")
    if self.status != "exact" and not self.note:
      raise ValueError(f"case {self.name}: a {self.status} case needs a note (the reason).")

  def tolerance(self, dtype: str) -> float:
    return TOLERANCE[dtype] if self.rtol is None else self.rtol


# ---------------------------------------------------------------------------
# Running a side.


def trajectory(side: Side, problem: Problem, steps: int, dtype: str) -> Trajectory:
  """The parameters (Flax layout, flattened to ``"0/kernel"`` etc., as float64
  NumPy arrays) after each of ``steps`` training steps of ``side``, and what
  the side's ``report`` reads (``"report:<name>"``)."""
  if dtype not in DTYPES:
    raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}.")
  if isinstance(side, TorchSide):
    return _torch_trajectory(side, problem, steps, dtype)
  if isinstance(side, JaxSide):
    return _jax_trajectory(side, problem, steps, dtype)
  raise TypeError(f"side must be a TorchSide or a JaxSide, got {type(side).__name__}.")


def _torch_data(array: np.ndarray, dtype: str) -> torch.Tensor:
  """Floats in ``dtype``; class labels stay integers."""
  floating = np.issubdtype(array.dtype, np.floating)
  return torch.as_tensor(array, dtype=TORCH_DTYPES[dtype] if floating else None)


def _jax_data(array: np.ndarray, dtype: str) -> jax.Array:
  floating = np.issubdtype(array.dtype, np.floating)
  return jnp.asarray(array, dtype if floating else jnp.int32)


def _torch_trajectory(side: TorchSide, problem: Problem, steps: int, dtype: str) -> Trajectory:
  model = problem.torch_model(dtype)
  x, target = (_torch_data(a, dtype) for a in problem.data())
  x_val, target_val = (_torch_data(a, dtype) for a in problem.validation_data())
  optimizer = side.optimizer(model)
  scheduler = side.scheduler(optimizer) if side.scheduler is not None else None
  out = []
  for k in range(steps):
    if side.edit is not None:
      side.edit(k, optimizer)
    if side.monitor:
      with torch.no_grad():
        monitored = problem.torch_loss(model(x_val), target_val).item()
    optimizer.zero_grad()
    problem.torch_loss(model(x), target).backward()
    optimizer.step()
    if scheduler is not None:
      scheduler.step(monitored) if side.monitor else scheduler.step()
    readings = {} if side.report is None else side.report(optimizer, scheduler)
    out.append({**flat_params(to_flax(model)), **_readings(readings)})
  return out


def _readings(readings: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """A side's reported numbers, as float64 arrays under ``report:<name>``."""
  return {f"report:{k}": np.asarray(v, np.float64).reshape(-1) for k, v in readings.items()}


def _jax_step(tx: optax.GradientTransformation, problem: Problem, monitor: bool) -> Callable:
  def step(params, state, batch, validation):
    grads = jax.grad(problem.jax_loss)(params, *batch)
    extra = {"value": problem.jax_loss(params, *validation)} if monitor else {}
    updates, state = tx.update(grads, state, params, **extra)
    return optax.apply_updates(params, updates), state

  return jax.jit(step)


def _jax_trajectory(side: JaxSide, problem: Problem, steps: int, dtype: str) -> Trajectory:
  init = to_flax(problem.torch_model(dtype))
  with jax.enable_x64(dtype == "float64"):
    params = jax.tree.map(lambda a: jnp.asarray(a, dtype), init)
    batch = tuple(_jax_data(a, dtype) for a in problem.data())
    validation = tuple(_jax_data(a, dtype) for a in problem.validation_data())
    tx = side.tx(params)
    state = tx.init(params)
    step = _jax_step(tx, problem, side.monitor)
    out = []
    for k in range(steps):
      if side.edit is not None:
        state = side.edit(k, state)
      params, state = step(params, state, batch, validation)
      readings = {} if side.report is None else side.report(state)
      out.append({**flat_params(params), **_readings(readings)})
  return out


# ---------------------------------------------------------------------------
# Comparing and judging.


@dataclasses.dataclass(frozen=True)
class Diff:
  """How far our parameters are from the reference's, over a whole run.

  Attributes:
    max_abs: largest elementwise ``|ours - reference|``.
    max_rel: largest ``max|ours - reference| / max|reference|`` of any tensor.
    rel_by_step: that relative difference after each step (step 1 first).
  """

  max_abs: float
  max_rel: float
  rel_by_step: tuple[float, ...]

  def first_step_over(self, tol: float) -> Optional[int]:
    """The first step (1-based) whose relative difference exceeds ``tol``."""
    return next((k + 1 for k, r in enumerate(self.rel_by_step) if not r <= tol), None)


def _abs_diff(ours: np.ndarray, ref: np.ndarray) -> np.ndarray:
  """``|ours - ref|``, 0 where both are NaN, inf where only one is."""
  d = np.abs(ours - ref)
  d[np.isnan(ours) & np.isnan(ref)] = 0.0
  d[np.isnan(d)] = np.inf
  return d


def compare(ours: Trajectory, reference: Trajectory) -> Diff:
  """The `Diff` of two trajectories of the same length and tensors."""
  if len(ours) != len(reference):
    raise ValueError(f"trajectories differ in length: {len(ours)} vs {len(reference)}.")
  max_abs, rel_by_step = 0.0, []
  for got, want in zip(ours, reference):
    if got.keys() != want.keys():
      raise ValueError(f"tensors differ: {sorted(got)} vs {sorted(want)}.")
    step_rel = 0.0
    for name, ref in want.items():
      d = _abs_diff(got[name], ref)
      worst = float(d.max(initial=0.0))
      scale = float(np.nanmax(np.abs(ref), initial=0.0))
      max_abs = max(max_abs, worst)
      step_rel = max(step_rel, worst / scale if scale > 0 else worst)
    rel_by_step.append(step_rel)
  return Diff(max_abs, max(rel_by_step, default=0.0), tuple(rel_by_step))


@dataclasses.dataclass(frozen=True)
class Result:
  """A case's outcome: its diffs by dtype, verdict text and whether it holds."""

  case: Case
  steps: int
  diffs: Mapping[str, Diff]
  verdict: str
  ok: bool


def judge(case: Case, diffs: Mapping[str, Diff]) -> tuple[str, bool]:
  """The verdict text of ``case`` given its diffs, and whether it holds."""
  if case.status == "pending":
    return f"pending ({case.note})", True
  failures = []
  for dtype, diff in diffs.items():
    tol = case.tolerance(dtype)
    if not diff.max_rel <= tol:
      failures.append(f"{dtype} max rel {diff.max_rel:.1e} > {tol:.0e} from step "
                      f"{diff.first_step_over(tol)}")
  if case.status == "exact":
    label = "exact" + (f" ({case.note})" if case.note else "")
  else:
    label = f"documented divergence: {case.note}"
  if failures:
    return f"FAIL: {'; '.join(failures)} [expected {label}]", False
  return label, True


def run_case(case: Case, steps: int, dtypes: Sequence[str] = DTYPES) -> Result:
  """Runs both sides of ``case`` for ``steps`` steps in each dtype and judges."""
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}.")
  diffs = {}
  if case.status != "pending":
    problem = Problem(loss=case.loss)
    assert case.reference_side is not None and case.jax_side is not None
    for dtype in dtypes:
      reference = trajectory(case.reference_side, problem, steps, dtype)
      ours = trajectory(case.jax_side, problem, steps, dtype)
      diffs[dtype] = compare(ours, reference)
  verdict, ok = judge(case, diffs)
  return Result(case, steps, diffs, verdict, ok)


def exit_status(results: Sequence[Result]) -> int:
  """1 if any checked case fails its verdict (an ``exact`` case that is not,
  or a documented divergence whose numbers moved), else 0."""
  return 0 if all(r.ok for r in results) else 1


# ---------------------------------------------------------------------------
# The table.


def _number(x: float) -> str:
  return "0" if x == 0 else f"{x:.1e}"


def format_table(results: Sequence[Result], dtypes: Sequence[str] = DTYPES) -> str:
  """The results as one Markdown table."""
  header = ["case", "reference", "ours", "steps"]
  for dtype in dtypes:
    header += [f"max abs diff ({dtype})", f"max rel diff ({dtype})"]
  header.append("verdict")
  rows = [header, ["---"] * len(header)]
  for r in results:
    row = [r.case.name, r.case.reference, r.case.ours, str(r.steps)]
    for dtype in dtypes:
      diff = r.diffs.get(dtype)
      row += ["-", "-"] if diff is None else [_number(diff.max_abs), _number(diff.max_rel)]
    row.append(r.verdict)
    rows.append(row)
  return "\n".join("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |"
                   for row in rows)
