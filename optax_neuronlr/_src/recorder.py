"""Recording per-unit learning rates over training, without host syncs.

`RateRecorder` keeps, for every recorded step, the flat
`rate_summary` of an optimizer state and the per-unit
rates of a few chosen leaves. Both are computed on the device by one jitted
function (compiled once) and kept there as arrays: JAX dispatches
asynchronously, so a training loop that records every step never waits for the
device. The data reach the host, all at once, when they are read.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from optax_neuronlr._src import paths as paths_lib
from optax_neuronlr._src import readers as inspect_lib
from optax_neuronlr._src import validation
from optax_neuronlr._src.readers import leaf_rates


@dataclasses.dataclass(frozen=True)
class RateRecord:
  """What `RateRecorder` keeps of one step; a pytree, jit-friendly.

  Attributes:
    keys: the summary keys ``"path/stat"`` (static: part of the tree
      structure, not data).
    summary: the summary values in the order of ``keys``, one vector (one
      device buffer per step however many leaves there are).
    rates: ``{path: per-unit rates}`` of the chosen leaves.
    bounds: ``(min_lr, max_lr)`` of each of them, shape ``(len(rates), 2)``,
      rows in the order of ``sorted(rates)``.
  """

  keys: tuple[str, ...]
  summary: jax.Array
  rates: dict[str, jax.Array]
  bounds: Any  # jax.Array (or an empty NumPy array)


jax.tree_util.register_dataclass(
    RateRecord, data_fields=["summary", "rates", "bounds"], meta_fields=["keys"]
)


class RateRecorder:
  """Keeps rate summaries and per-unit rates over training steps.

  Each `record` dispatches one jitted function of the optimizer state
  (traced and compiled once) that computes `rate_summary`
  (stacked into one vector) and `learning_rates` of the
  leaves whose path matches ``leaves``. The results stay on the device until
  `summaries`, `rates` or `steps` is read, which fetches
  everything recorded so far in one transfer. A recorder serves one optimizer
  state structure; make one per optimizer. The ``(min_lr, max_lr)`` of each
  recorded leaf are kept too (`bounds`), for the figures of
  `plot`.

  It records what `learning_rates` reads, on every
  optimizer of the package (NorMuon's per-neuron rates, Muon's and AdamW's
  rates, Adam-mini's per-block rates, the group rates of ``param_groups``,
  ...). Keys and paths are those of `rate_summary`: a
  leaf's ``"/"``-joined path (``"Dense_0/kernel"``; ``"l1/kernel"`` for an
  ``nnx.Optimizer``), whatever optax structure wraps the optimizer; a
  parameter governed by a second rule state is ``"<path>#1"``.

  Inside a jitted training step, compute the record with `compute`,
  return it from the step and hand it to `add`:

    recorder = nlr.RateRecorder(leaves=r".*kernel")

    @jax.jit
    def train_step(params, state, batch):
      grads = jax.grad(loss)(params, batch)
      updates, state = tx.update(grads, state, params)
      params = optax.apply_updates(params, updates)
      return params, state, recorder.compute(state)

    for step, batch in enumerate(batches):
      params, state, rec = train_step(params, state, batch)
      recorder.add(step, rec)  # No host sync: rec holds device arrays.

  A plain ``nlr.rate_summary(state)`` dict returned by a step works too:
  ``recorder.add(step, summary)``.

  Args:
    leaves: a regular expression (a str or a compiled ``re.Pattern``); the
      per-unit rates of every leaf it selects by the package's one path rule
      (`optax_neuronlr._src.paths`: it matches the leaf's whole path or
      a ``"/"``-prefix of it, so ``"Dense_0"`` selects ``Dense_0/kernel``) are
      recorded (``".*"``: all; ``None``: none, summaries only).
    every: record only the steps that are multiples of ``every``, an int
      ``>= 1`` (NumPy ints too; then ``step`` should be a Python int: an array
      step is fetched from the device).
    summary: whether to record `rate_summary` (a bool).

  Raises:
    TypeError: for ``leaves`` that is not a pattern or None, a non-bool
      ``summary`` or a non-numeric ``every``.
    ValueError: for an invalid regular expression or ``every`` that is not an
      int ``>= 1``.

  Example:
    >>> import jax.numpy as jnp, optax, optax_neuronlr as nlr
    >>> params = {"w": jnp.ones((3, 2))}
    >>> tx = nlr.sign_consistency_lr(1e-2, granularity="neuron")
    >>> state = tx.init(params)
    >>> recorder = nlr.RateRecorder(leaves="w")
    >>> for step in range(5):
    ...   grads = {"w": jnp.full((3, 2), 0.1 * (step + 1))}
    ...   updates, state = tx.update(grads, state, params)
    ...   params = optax.apply_updates(params, updates)
    ...   _ = recorder.record(step, state)
    >>> recorder.rates("w").shape
    (5, 2)
    >>> recorder.summaries()["w/frac_at_max_lr"].shape
    (5,)
  """

  def __init__(
      self,
      leaves: Optional[Union[str, re.Pattern]] = None,
      *,
      every: int = 1,
      summary: bool = True,
  ):
    every = int(validation.check_int("every", every, low=1))  # type: ignore[arg-type]
    summary = validation.check_flag("summary", summary)
    if leaves is not None and not isinstance(leaves, (str, re.Pattern)):
      raise TypeError(
          "leaves must be a regular expression (a str or a compiled re.Pattern) "
          f"or None, got {leaves!r}."
      )
    self._selector = None if leaves is None else paths_lib.Selector(leaves, "leaves")
    self.leaves = leaves
    self.every = every
    self.summary = summary
    self._compute_jit = jax.jit(self.compute)
    self._stack_jit = jax.jit(_stack)
    self.clear()

  def clear(self) -> None:
    """Forgets everything recorded (the compiled function is kept)."""
    self._keys: Optional[tuple[str, ...]] = None
    self._paths: Optional[tuple[str, ...]] = None
    self._pending: list[tuple[Any, RateRecord]] = []
    self._steps: list[np.ndarray] = []
    self._rows: list[np.ndarray] = []
    self._rates: dict[str, list[np.ndarray]] = {}
    self._bounds: dict[str, list[np.ndarray]] = {}

  def compute(self, opt_state: Any) -> RateRecord:
    """The record of ``opt_state``: summary and chosen per-unit rates.

    Pure ``jnp``: call it inside a jitted step, return its result and pass it
    to `add`. `record` runs it jitted.

    Args:
      opt_state: any optax state that `learning_rates`
        reads.

    Returns:
      A `RateRecord` (empty summary when ``summary=False``).
    """
    summary = inspect_lib.rate_summary(opt_state) if self.summary else {}
    chosen = {}
    if self._selector is not None:
      found = leaf_rates(opt_state)
      chosen = {k: found[k] for k in sorted(found) if self._selector.selects(k)}
    return RateRecord(
        keys=tuple(summary),
        summary=_stack(list(summary.values())),
        rates={k: r for k, (r, _, _) in chosen.items()},
        bounds=_stack([b for _, lo, hi in chosen.values() for b in (lo, hi)]
                      ).reshape(len(chosen), 2),
    )

  def due(self, step: Any) -> bool:
    """Whether ``step`` is recorded (a multiple of ``every``)."""
    return self.every == 1 or int(step) % self.every == 0

  def record(self, step: Any, opt_state: Any) -> Optional[RateRecord]:
    """Records the rates of ``opt_state`` at ``step``; never waits for them.

    Args:
      step: the training step, a Python int (or a scalar array).
      opt_state: the optimizer state after the update of ``step``.

    Returns:
      The `RateRecord` just kept (device arrays, possibly still being
      computed), or None when ``step`` is not a multiple of ``every``.
    """
    if not self.due(step):
      return None
    record = self._compute_jit(opt_state)
    self._append(step, record)
    return record

  def add(self, step: Any, record: RateRecord | Mapping[str, Any]) -> None:
    """Keeps a record computed elsewhere, e.g. returned by a jitted step.

    Like `record`, skips steps that are not multiples of ``every``
    (gate the computation in the step yourself to save its cost too).

    Args:
      step: the training step.
      record: a `RateRecord` from `compute`, or a flat dict of
        scalars such as `rate_summary` returns (the
        same keys at every step).
    """
    if not self.due(step):
      return
    if not isinstance(record, RateRecord):
      keys = tuple(record)
      if self._keys is not None and set(keys) == set(self._keys):
        keys = self._keys  # Same keys, reordered (jit outputs sort dicts).
      values = [record[k] for k in keys]
      record = RateRecord(keys, self._stack_jit(values), {}, jnp.zeros((0, 2)))
    self._append(step, record)

  def _append(self, step: Any, record: RateRecord) -> None:
    paths = tuple(sorted(record.rates))
    if self._keys is None:
      self._keys, self._paths = record.keys, paths
    elif record.keys != self._keys or paths != self._paths:
      raise ValueError(
          "RateRecorder records one optimizer state structure; got summary "
          f"keys {list(record.keys)} and rate paths {list(paths)} after "
          f"{list(self._keys)} and {list(self._paths or ())}. Use one recorder per "
          "optimizer, or clear() it."
      )
    self._pending.append((step, record))

  def _sync(self) -> None:
    """Fetches every pending record to the host, in one transfer."""
    if not self._pending:
      return
    pending = jax.device_get(
        [(s, r.summary, r.rates, r.bounds) for s, r in self._pending]
    )
    self._pending = []
    self._steps.append(np.asarray([p[0] for p in pending]))
    self._rows.append(np.stack([np.asarray(p[1]) for p in pending]))
    for i, path in enumerate(self.paths):
      self._rates.setdefault(path, []).append(
          np.stack([np.asarray(p[2][path]) for p in pending])
      )
      self._bounds.setdefault(path, []).append(
          np.stack([np.asarray(p[3][i]) for p in pending])
      )

  def __len__(self) -> int:
    return len(self._pending) + sum(len(s) for s in self._steps)

  @property
  def keys(self) -> tuple[str, ...]:
    """The summary keys ``"path/stat"`` recorded (empty before any record)."""
    return self._keys or ()

  @property
  def paths(self) -> tuple[str, ...]:
    """The paths of the leaves whose per-unit rates are recorded."""
    return self._paths or ()

  @property
  def steps(self) -> np.ndarray:
    """The recorded steps, shape ``(n,)``."""
    self._sync()
    if not self._steps:
      return np.zeros((0,), np.int64)
    return np.concatenate(self._steps)

  def summaries(self) -> dict[str, np.ndarray]:
    """``{"path/stat": values over the recorded steps}``, each of shape ``(n,)``."""
    self._sync()
    if not self._rows:
      return {}
    rows = np.concatenate(self._rows)
    return {key: rows[:, i] for i, key in enumerate(self.keys)}

  def rates(self, path: str) -> np.ndarray:
    """Per-unit rates of leaf ``path`` over the recorded steps.

    Args:
      path: one of `paths`.

    Returns:
      An array of shape ``(n, *unit_shape)``.

    Raises:
      KeyError: if the rates of ``path`` were not recorded.
    """
    self._check_path(path)
    self._sync()
    return np.concatenate(self._rates[path])

  def bounds(self, path: str) -> np.ndarray:
    """``(min_lr, max_lr)`` of leaf ``path`` at each recorded step.

    Args:
      path: one of `paths`.

    Returns:
      An array of shape ``(n, 2)``.

    Raises:
      KeyError: if the rates of ``path`` were not recorded.
    """
    self._check_path(path)
    self._sync()
    return np.concatenate(self._bounds[path])

  def _check_path(self, path: str) -> None:
    if path not in self.paths:
      raise KeyError(
          f"no per-unit rates recorded for {path!r}; recorded: "
          f"{list(self.paths)} (choose them with RateRecorder(leaves=...))."
      )

  def __repr__(self) -> str:
    return (
        f"RateRecorder(leaves={self.leaves!r}, every={self.every}, "
        f"summary={self.summary}, recorded={len(self)})"
    )


def _stack(values: list[Any]) -> jax.Array:
  """Scalars as one vector of the default float dtype."""
  dtype = jnp.result_type(float)
  if not values:
    return jnp.zeros((0,), dtype)
  return jnp.stack([jnp.asarray(v, dtype) for v in values])
