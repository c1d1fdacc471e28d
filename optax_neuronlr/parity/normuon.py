"""Muon and NorMuon parity: ``nlr.muon`` against ``torch.optim.Muon``, and
``nlr.normuon`` against a restatement of the NorMuon authors' ``normuon_update``.

Two problems, each trained from the same initial weights on the same batches:

* ``matrices``: a two-layer tanh MLP regression on plain ``(in, out)``
  kernels (one wide, one tall, so both Newton-Schulz orientations run), with
  a bias (trained by AdamW);
* ``block``: the small GPT of `optax_neuronlr.parity.adam_mini`, in Flax
  NNX from the standard modules (``nnx.Embed``, ``nnx.MultiHeadAttention``
  with 3-D ``(d, heads, head_dim)`` / ``(heads, head_dim, d)`` kernels, an
  ``nnx.Linear`` MLP, ``nnx.LayerNorm``, an ``nnx.Linear`` head).

The reference side keeps its own parameters as PyTorch tensors: each hidden
kernel as the ``(out, in)`` matrix that `model_layout`
says it is (a 3-D query kernel ``(d, h, k)`` is the ``(h*k, d)`` weight of
PyTorch's ``q_proj``), every other leaf as it is. Each step, its gradient is
computed by JAX from the reference's own parameters (the same loss), and the
reference optimizer updates them; trajectories are compared in Flax layout
after every step (`optax_neuronlr.parity.harness.compare`), in float64.

* ``muon``: ``torch.optim.Muon(lr, weight_decay, momentum=0.95, nesterov=True,
  eps=EPS)`` on the hidden weights, ``torch.optim.AdamW`` on the rest, against
  ``nlr.muon``. Two adjustments make float64 parity meaningful, both on the
  reference side of the comparison only: ``torch.optim.Muon`` casts its
  Newton-Schulz input to bfloat16 (``grad.bfloat16()``), which the row turns
  into a no-op while the optimizer steps (``torch.Tensor.bfloat16`` patched
  to return a copy of the tensor, never the tensor itself: with
  ``nesterov=False`` torch hands its momentum buffer to Newton-Schulz, which
  divides its input in place; ``nlr.muon``'s ``ns_dtype="bfloat16"`` is the
  equivalent of the cast); and torch divides by ``max(norm, eps)`` where the NorMuon
  and Keller Jordan references (and ``nlr``) divide by ``norm + eps``, so
  both sides use ``eps=1e-15``, below float64 resolution of the norm.
* ``normuon``: `normuon_update` (this module's own statement of the
  reference's math: momentum ``lerp``, Nesterov, Newton-Schulz with ``norm +
  1e-7``, the per-row EMA of the mean square, division by ``sqrt(v) +
  1e-10``, the rescale to the pre-normalisation Frobenius norm,
  ``max(1, out/in) ** 0.5``), decoupled weight decay ``p *= 1 - lr*wd``, and
  the reference's auxiliary Adam (``adam_update``) on the other leaves,
  against ``nlr.normuon``.

On both rows the AdamW leaves decay as the layout says (``LeafRole.weight_decay``:
embeddings and the output head, not norm scales or biases): the reference
gets them as two parameter groups, with and without weight decay. The reference's bfloat16 cast is left out (float64
  throughout).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from flax import nnx

import optax_neuronlr as nlr
from optax_neuronlr._src import paths
from optax_neuronlr.parity import adam_mini as gpt
from optax_neuronlr.parity import harness

Trajectory = harness.Trajectory
NAMES = ("muon", "normuon")
PROBLEMS = ("matrices", "block")
DTYPES = ("float64",)
TOLERANCE = 1e-10  # on the max relative difference, float64 (the rows' rtol)
MUON_EPS = 1e-15


@dataclasses.dataclass(frozen=True)
class Settings:
  """The hyperparameters both sides use."""

  lr: float = 0.02
  weight_decay: float = 0.1
  momentum: float = 0.95
  beta2: float = 0.95
  adam_lr: float = 3e-3
  b1: float = 0.9
  b2: float = 0.95
  adam_eps: float = 1e-8
  adam_weight_decay: float = 0.01
  nesterov: bool = True


# ---------------------------------------------------------------------------
# Problems: initial params (a pure dict), a loss and batches.


@dataclasses.dataclass(frozen=True)
class Problem:
  params: Mapping[str, Any]
  loss: Callable[[Any, Any], jax.Array]
  batches: Callable[[int], list]


def matrices_problem() -> Problem:
  rng = np.random.default_rng(0)
  params = {"fc1": {"kernel": rng.normal(size=(6, 20)) / 3, "bias": np.zeros(20)},
            "fc2": {"kernel": rng.normal(size=(20, 3)) / 5}}

  def loss(p, batch):
    x, y = batch
    h = jnp.tanh(x @ p["fc1"]["kernel"] + p["fc1"]["bias"])
    return jnp.mean((h @ p["fc2"]["kernel"] - y) ** 2)

  def batches(steps):
    r = np.random.default_rng(1)
    return [(r.normal(size=(16, 6)), r.normal(size=(16, 3))) for _ in range(steps)]

  return Problem(params, loss, batches)


def block_problem() -> Problem:
  p = gpt.GPTProblem()
  params = gpt.torch_to_flax(gpt.torch_model(p, "float64"))
  with jax.enable_x64(True):
    graphdef, state, rest = nnx.split(gpt.nnx_model(p, "float64", params), nnx.Param, ...)

  def loss(params, tokens):
    st = jax.tree.map(lambda x: x, state)
    nnx.replace_by_pure_dict(st, params)
    return gpt.jax_loss(nnx.merge(graphdef, st, rest), tokens)

  return Problem(params, loss, lambda steps: list(p.tokens(steps)))


def problem(name: str) -> Problem:
  return {"matrices": matrices_problem, "block": block_problem}[name]()


# ---------------------------------------------------------------------------
# Flax leaves as PyTorch (out, in) matrices.


def _views(params) -> dict[str, nlr.MatrixView]:
  return {l.path: l.matrix for l in nlr.model_layout(params).leaves
          if l.hidden and l.matrix is not None}


def to_torch(x: np.ndarray, view: nlr.MatrixView) -> torch.Tensor:
  """The ``(out, in)`` weight of a one-matrix Flax leaf."""
  order = view.reduction_axes + view.output_axes
  fan_in = math.prod(x.shape[a] for a in view.reduction_axes)
  return torch.from_numpy(np.ascontiguousarray(
      np.transpose(x, order).reshape(fan_in, -1).T))


def from_torch(w: torch.Tensor, shape, view: nlr.MatrixView) -> np.ndarray:
  order = view.reduction_axes + view.output_axes
  moved = w.detach().numpy().T.reshape([shape[a] for a in order])
  return np.transpose(moved, np.argsort(order)).copy()


def _flat(tree) -> dict[str, np.ndarray]:
  return {paths.path_str(p): np.asarray(v, np.float64)  # pylint: disable=protected-access
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _unflat(like, values: Mapping[str, np.ndarray]):
  flat, treedef = jax.tree_util.tree_flatten_with_path(like)
  return treedef.unflatten(
      [jnp.asarray(values[paths.path_str(p)]) for p, _ in flat])  # pylint: disable=protected-access


# ---------------------------------------------------------------------------
# The reference: normuon_update restated, and the loops.


def newton_schulz(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
  """Quintic Newton-Schulz on an ``(out, in)`` matrix, as the NorMuon reference
  (without its bfloat16 cast): transpose when out > in, ``X / (|X|_F + eps)``."""
  a, b, c = (3.4445, -4.7750, 2.0315)
  x = g.T if g.size(0) > g.size(1) else g
  x = x / (x.norm() + eps)
  for _ in range(steps):
    gram = x @ x.T
    x = a * x + (b * gram + c * gram @ gram) @ x
  return x.T if g.size(0) > g.size(1) else x


def normuon_update(grad: torch.Tensor, momentum: torch.Tensor, second: torch.Tensor,
                   beta: float, beta2: float, nesterov: bool = True) -> torch.Tensor:
  """One NorMuon direction on an ``(out, in)`` matrix; updates the buffers in place."""
  momentum.lerp_(grad, 1 - beta)
  o = newton_schulz(grad.lerp(momentum, beta) if nesterov else momentum)
  norm = o.norm()
  second.lerp_((o * o).mean(dim=-1, keepdim=True), 1 - beta2)
  hat = o / (second.sqrt() + 1e-10)
  hat = hat * (norm / (hat.norm() + 1e-10))
  return hat * max(1.0, grad.size(0) / grad.size(1)) ** 0.5


def adam_update(grad, m, v, step, b1, b2, eps) -> torch.Tensor:
  """The reference's auxiliary Adam direction (bias-corrected, eps outside the root)."""
  m.lerp_(grad, 1 - b1)
  v.lerp_(grad * grad, 1 - b2)
  return (m / (1 - b1**step)) / ((v / (1 - b2**step)).sqrt() + eps)


@contextlib.contextmanager
def _no_bfloat16_cast():
  """``Tensor.bfloat16`` as a copy in the tensor's own dtype (torch.optim.Muon's
  NS input cast, which Newton-Schulz then divides in place: returning the
  tensor itself would divide Muon's momentum buffer when ``nesterov=False``)."""
  original = torch.Tensor.bfloat16
  torch.Tensor.bfloat16 = lambda self, *args, **kwargs: self.clone()
  try:
    yield
  finally:
    torch.Tensor.bfloat16 = original


def reference_trajectory(kind: str, prob: Problem, steps: int, s: Settings) -> Trajectory:
  views = _views(prob.params)
  init = _flat(prob.params)
  tensors = {n: (to_torch(x, views[n]) if n in views else torch.from_numpy(x.copy()))
             for n, x in init.items()}
  for t in tensors.values():
    t.requires_grad_(False)
  decays = {l.path: l.weight_decay for l in nlr.model_layout(prob.params).leaves}
  adam_wd = {n: s.adam_weight_decay if decays[n] else 0.0 for n in tensors}
  hidden = [tensors[n] for n in tensors if n in views]
  others = [n for n in tensors if n not in views]
  if kind == "muon":
    muon = torch.optim.Muon(
        _params(hidden), lr=s.lr,
        weight_decay=s.weight_decay, momentum=s.momentum, nesterov=s.nesterov,
        eps=MUON_EPS)
    leaves = dict(zip([n for n in tensors if n in views], muon.param_groups[0]["params"]))
    leaves.update({n: torch.nn.Parameter(tensors[n]) for n in others})
    # Two AdamW groups: decay on embeddings and the head, none on norms and biases.
    adamw = torch.optim.AdamW(
        [{"params": [leaves[n] for n in others if adam_wd[n]],
          "weight_decay": s.adam_weight_decay},
         {"params": [leaves[n] for n in others if not adam_wd[n]], "weight_decay": 0.0}],
        lr=s.adam_lr, betas=(s.b1, s.b2), eps=s.adam_eps)
  else:
    leaves = {n: torch.nn.Parameter(t) for n, t in tensors.items()}
    state = {n: (torch.zeros_like(t), torch.zeros_like(t[..., :1]) if n in views
                 else torch.zeros_like(t)) for n, t in leaves.items()}
  grad_fn = jax.jit(jax.grad(prob.loss))
  out = []
  with torch.no_grad():
    for k, batch in enumerate(prob.batches(steps)):
      flax = {n: (from_torch(w, init[n].shape, views[n]) if n in views else w.detach().numpy())
              for n, w in leaves.items()}
      grads = _flat(grad_fn(_unflat(prob.params, flax), batch))
      for n, w in leaves.items():
        g = grads[n]
        w.grad = to_torch(g, views[n]) if n in views else torch.from_numpy(g.copy())
      if kind == "muon":
        with _no_bfloat16_cast():
          muon.step()
        adamw.step()
      else:
        for n, w in leaves.items():
          m, v = state[n]
          if n in views:
            assert w.grad is not None
            u = normuon_update(w.grad.clone(), m, v, s.momentum, s.beta2, s.nesterov)
            w.mul_(1 - s.lr * s.weight_decay).add_(u, alpha=-s.lr)
          else:
            u = adam_update(w.grad, m, v, k + 1, s.b1, s.b2, s.adam_eps)
            w.mul_(1 - s.adam_lr * adam_wd[n]).add_(u, alpha=-s.adam_lr)
      out.append({n: (from_torch(w, init[n].shape, views[n]) if n in views
                      else w.detach().numpy().copy()) for n, w in leaves.items()})
  return out


def _params(tensors):
  return [torch.nn.Parameter(t) for t in tensors]


def jax_tx(kind: str, s: Settings) -> optax.GradientTransformation:
  common: dict[str, Any] = dict(
      adam_learning_rate=s.adam_lr, b1=s.b1, b2=s.b2, adam_eps=s.adam_eps,
      adam_weight_decay=s.adam_weight_decay, nesterov=s.nesterov)
  if kind == "muon":
    return nlr.muon(s.lr, s.momentum, s.weight_decay, eps=MUON_EPS, **common)
  return nlr.normuon(s.lr, s.momentum, s.beta2, s.weight_decay, **common)


def jax_trajectory(kind: str, prob: Problem, steps: int, s: Settings) -> Trajectory:
  params = jax.tree.map(jnp.asarray, prob.params)
  tx = jax_tx(kind, s)
  state = tx.init(params)

  @jax.jit
  def step(params, state, batch):
    grads = jax.grad(prob.loss)(params, batch)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  out = []
  for batch in prob.batches(steps):
    params, state = step(params, state, batch)
    out.append(_flat(params))
  return out


def compare(kind: str, problem_name: str, steps: int, s: Settings = Settings()) -> harness.Diff:
  """Both sides of ``kind`` on ``problem_name`` in float64, compared."""
  with jax.enable_x64(True):
    prob = problem(problem_name)
    return harness.compare(jax_trajectory(kind, prob, steps, s),
                           reference_trajectory(kind, prob, steps, s))


CASES = {
    "muon": harness.Case(
        name="muon",
        reference="torch.optim.Muon (+ AdamW), float64 NS, eps=1e-15",
        ours="nlr.muon(0.02, weight_decay=0.1), matrices and an NNX block",
        status="exact", rtol=TOLERANCE,
        # The sides of this row run in this module (reference_trajectory and
        # jax_trajectory); these name what each side is, for the table's readers.
        reference_side=harness.TorchSide(lambda model: None),
        jax_side=harness.JaxSide(lambda params: jax_tx("muon", Settings()))),
    "normuon": harness.Case(
        name="normuon",
        reference="NorMuon normuon_update (zichongli5/NorMuon) + aux Adam, restated",
        ours="nlr.normuon(0.02, weight_decay=0.1), matrices and an NNX block",
        status="exact", rtol=TOLERANCE,
        reference_side=harness.TorchSide(lambda model: None),
        jax_side=harness.JaxSide(lambda params: jax_tx("normuon", Settings()))),
}


def run_case(name: str, steps: int, dtypes=DTYPES) -> harness.Result:
  """The row ``name`` of the parity table: the worst of both problems (float64)."""
  case = CASES[name]
  diffs = {}
  if "float64" in dtypes:
    both = [compare(name, p, steps) for p in PROBLEMS]
    diffs["float64"] = harness.Diff(
        max(d.max_abs for d in both), max(d.max_rel for d in both),
        tuple(max(r) for r in zip(*(d.rel_by_step for d in both))))
  verdict, ok = harness.judge(case, diffs)
  return harness.Result(case, steps, diffs, verdict, ok)
