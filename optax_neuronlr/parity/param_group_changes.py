"""Parity rows for optimizers that change during training (reference 003).

Reference 003 lists ``optimizer.add_param_group(...)`` ("useful for
fine-tuning") among the optimizer's methods, and PyTorch clears a group's
statistics with ``optimizer.state[p].clear()``. In optax the transformation is
fixed when it is built: a model that grows a head needs a new transformation,
and the state of the old one must carry over. These rows check that
``nlr.add_param_group`` and ``nlr.reset_param_group`` do what PyTorch does:

* ``003-add-group-sgd``: ``SGD`` groups (one per layer) with momentum 0.9;
  after ``k = max(1, steps // 2)`` steps the model gains a head,
  ``head(relu(mlp(x)))`` with ``head = Linear(3, 3)``, and
  ``optimizer.add_param_group({"params": head.parameters(), "lr": 0.2,
  "momentum": 0.5})``. The old groups keep their momentum buffers; the head
  starts without one (step 0).
* ``003-add-group-adam``: the same with ``Adam`` groups and a head group with
  its own ``betas``; the old groups keep their moments and step counts.
* ``003-reset-group``: ``Adam`` groups; after ``k`` steps
  ``optimizer.state[p].clear()`` for the second layer's parameters (torch 2.13's
  ``Adam._init_group`` re-initialises a state whose ``len`` is 0: step 0, zero
  moments), against ``nlr.reset_param_group(tx, state, params, "layer2")``.
  No model change.

Both sides start from the harness MLP's PyTorch initialisation, the head from
its own fixed seed; the loss is MSE against the harness data's 3-wide targets.
The JAX side's step is re-jitted for the new transformation. Every parameter
(the head's too, once it exists) is compared after every step.

Float32 after the reset: the restarted Adam normalises each entry of the second
layer anew, and on the second step after it the first moment of a bias entry
whose gradient changes sign (-4.0e-4, then +5.0e-4, at 50 steps) is a
difference of two terms 30 times its size. The two sides' gradients differ by
float32 rounding (torch's and XLA's summation orders), and that cancellation
amplifies it: ``max rel`` reaches ~8e-6 in float32 (~9e-15 in float64) at 50
steps, on ``2/bias`` at step 27, against ~1e-6 before the reset. Both sides do
the same arithmetic; it is the conditioning of the problem.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

import optax_neuronlr as nlr
from optax_neuronlr.parity import cases
from optax_neuronlr.parity import harness

HEAD_SEED = 1234
_ADAM_LRS = (0.01, 0.02)  # a tenth of 003's rates, as cases._003_GROUP_LRS

JaxChange = Callable[[Any, Any, Any], tuple[Any, Any]]


def change_step(steps: int) -> int:
  """The number of steps taken before the change: ``max(1, steps // 2)``."""
  return max(1, steps // 2)


def torch_head(dtype: str) -> torch.nn.Linear:
  """The new head, ``Linear(3, 3)``, from its own seed (the global RNG is untouched)."""
  with torch.random.fork_rng(devices=[]):
    torch.manual_seed(HEAD_SEED)
    head = torch.nn.Linear(3, 3)
  return head.to(harness.TORCH_DTYPES[dtype])


@dataclasses.dataclass(frozen=True)
class Row:
  """A row: the case (its sides give the optimizers before the change) and the change.

  Run it with this module's `run_case`; ``harness.run_case(row.case)``
  would train without the change.

  Attributes:
    case: the table row; ``reference_side.optimizer`` builds the torch
      optimizer, ``jax_side.tx`` ours.
    head: whether the model gains a head at the change.
    torch_change: ``(optimizer, head or None) -> None``.
    jax_change: ``(tx, state, params) -> (tx, state)``; ``params`` include the
      head when there is one.
  """

  case: harness.Case
  head: bool
  torch_change: Callable[[Any, Any], None]  # (optimizer, head or None)
  jax_change: JaxChange


# ---------------------------------------------------------------------------
# The two sides.


def _forward_torch(mlp: torch.nn.Module, head: Optional[torch.nn.Linear],
                   x: torch.Tensor) -> torch.Tensor:
  out = mlp(x)
  return out if head is None else head(torch.relu(out))


def _linear_flax(layer: torch.nn.Linear) -> dict[str, np.ndarray]:
  """``{"kernel": W.T, "bias": b}``, as `harness.to_flax`."""
  return harness.to_flax(torch.nn.Sequential(layer))["0"]


def _flat_torch(mlp: torch.nn.Sequential, head: Optional[torch.nn.Linear]) -> dict:
  params = harness.to_flax(mlp)
  if head is not None:
    params["head"] = _linear_flax(head)
  return harness.flat_params(params)


def torch_trajectory(row: Row, steps: int, dtype: str) -> harness.Trajectory:
  """PyTorch: ``k`` steps, the change, then the remaining steps."""
  problem = harness.Problem()
  mlp = problem.torch_model(dtype)
  x, target = (torch.as_tensor(a, dtype=harness.TORCH_DTYPES[dtype])
               for a in problem.data())
  side = row.case.reference_side
  assert isinstance(side, harness.TorchSide)
  optimizer = side.optimizer(mlp)
  head, out = None, []
  for i in range(steps):
    if i == change_step(steps):
      head = torch_head(dtype) if row.head else None
      row.torch_change(optimizer, head)
    optimizer.zero_grad()
    torch.nn.functional.mse_loss(_forward_torch(mlp, head, x), target).backward()
    optimizer.step()
    out.append(_flat_torch(mlp, head))
  return out


def _jax_loss(params: dict, x: jax.Array, target: jax.Array) -> jax.Array:
  out = harness.mlp_apply({name: params[name] for name in cases.LAYERS}, x)
  if "head" in params:
    out = jax.nn.relu(out) @ params["head"]["kernel"] + params["head"]["bias"]
  return jnp.mean((out - target) ** 2)


def _jax_step(tx: optax.GradientTransformation) -> Callable:
  def step(params, state, x, target):
    grads = jax.grad(_jax_loss)(params, x, target)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return jax.jit(step)


def jax_trajectory(row: Row, steps: int, dtype: str,
                   change: Optional[JaxChange] = None) -> harness.Trajectory:
  """Ours: the same run; ``change`` replaces ``row.jax_change`` (negative controls)."""
  change = row.jax_change if change is None else change
  problem = harness.Problem()
  init = harness.to_flax(problem.torch_model(dtype))
  head = _linear_flax(torch_head(dtype)) if row.head else None
  with jax.enable_x64(dtype == "float64"):
    params = jax.tree.map(lambda a: jnp.asarray(a, dtype), init)
    x, target = (jnp.asarray(a, dtype) for a in problem.data())
    side = row.case.jax_side
    assert isinstance(side, harness.JaxSide)
    tx = side.tx(params)
    state = tx.init(params)
    step, out = _jax_step(tx), []
    for i in range(steps):
      if i == change_step(steps):
        if head is not None:
          params = {**params, "head": jax.tree.map(lambda a: jnp.asarray(a, dtype), head)}
        tx, state = change(tx, state, params)
        step = _jax_step(tx)
      params, state = step(params, state, x, target)
      out.append(harness.flat_params(params))
  return out


# ---------------------------------------------------------------------------
# The rows.


def _torch_add_group(**hyperparams: Any) -> Callable[[Any, torch.nn.Linear], None]:
  def change(optimizer, head):
    optimizer.add_param_group({"params": head.parameters(), **hyperparams})
  return change


def _jax_add_group(**hyperparams: Any) -> JaxChange:
  def change(tx, state, params):
    return nlr.add_param_group(tx, state, params,
                               {"params": "head", "name": "head", **hyperparams})
  return change


def _torch_clear_group(index: int) -> Callable[[Any, None], None]:
  def change(optimizer, head):
    del head
    for p in optimizer.param_groups[index]["params"]:
      optimizer.state[p].clear()
  return change


def _jax_reset_group(name: str) -> JaxChange:
  def change(tx, state, params):
    return tx, nlr.reset_param_group(tx, state, params, name)
  return change


_SEED = cases.SEED_003
_SGD_LRS = (0.05, 0.1)
# Before the change, the Adam rows run 003's two Adam groups (one per layer).
_TORCH_ADAM = harness.TorchSide(lambda m: torch.optim.Adam(cases.torch_groups(m, lr=_ADAM_LRS)))
_JAX_ADAM = harness.JaxSide(lambda p: cases.jax_groups(optax.adam, _ADAM_LRS))

ROWS: dict[str, Row] = {row.case.name: row for row in (
    Row(harness.Case(
        "003-add-group-sgd", f"{_SEED} add_param_group (SGD momentum)",
        "nlr.add_param_group(tx, state, params, group)", "exact",
        harness.TorchSide(lambda m: torch.optim.SGD(cases.torch_groups(m, lr=_SGD_LRS),
                                                    momentum=0.9)),
        harness.JaxSide(lambda p: cases.jax_groups(optax.sgd, _SGD_LRS, momentum=0.9)),
        note="head(relu(mlp)) and a group {lr 0.2, momentum 0.5} after steps//2 steps"),
        head=True,
        torch_change=_torch_add_group(lr=0.2, momentum=0.5),
        jax_change=_jax_add_group(lr=0.2, momentum=0.5)),
    Row(harness.Case(
        "003-add-group-adam", f"{_SEED} add_param_group (Adam, own betas)",
        "nlr.add_param_group(tx, state, params, group)", "exact",
        _TORCH_ADAM, _JAX_ADAM,
        note="head(relu(mlp)) and a group {lr 0.05, betas (0.8, 0.99)} after steps//2 steps"),
        head=True,
        torch_change=_torch_add_group(lr=0.05, betas=(0.8, 0.99)),
        jax_change=_jax_add_group(lr=0.05, b1=0.8, b2=0.99)),
    Row(harness.Case(
        "003-reset-group", f"{_SEED} optimizer.state[p].clear() for group 1 (Adam)",
        'nlr.reset_param_group(tx, state, params, "layer2")', "exact",
        _TORCH_ADAM, _JAX_ADAM,
        note="second layer's moments and step count restart after steps//2 steps"),
        head=False,
        torch_change=_torch_clear_group(1),
        jax_change=_jax_reset_group("layer2")),
)}
"""The rows, by name, in table order."""

NAMES = tuple(ROWS)


def run_case(name: str, steps: int,
             dtypes: tuple[str, ...] = harness.DTYPES) -> harness.Result:
  """The row ``name`` as a `harness.Result`: both sides for ``steps``
  steps in each dtype, every parameter compared after every step."""
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}.")
  row = ROWS[name]
  diffs = {dtype: harness.compare(jax_trajectory(row, steps, dtype),
                                  torch_trajectory(row, steps, dtype))
           for dtype in dtypes}
  verdict, ok = harness.judge(row.case, diffs)
  return harness.Result(row.case, steps, diffs, verdict, ok)
