"""The readers: the rates the last update applied, from any nested optax state.

Every reader (`learning_rates`, `learning_rates_by_state`,
`leaf_rates`, `rate_summary` and
`RateRecorder`) reads one list, the rate sources of
`rate_sources`: rule states (recognised by type,
not through a registry), the rates that Muon and AdamW record
(`record_learning_rate`) and injected group rates of
plain optax optimizers; so each sees what the others see. Sources are found
wherever they sit: in ``optax.chain`` tuples, ``optax.multi_transform`` /
``optax.partition`` states, ``optax.masked``, ``optax.inject_hyperparams``,
``optax.apply_if_finite``, ``optax.MultiSteps`` or any other NamedTuple,
tuple, list or dict. Per-unit rates are recomputed from each state's
statistics and the scalars of its last step; nothing per-element is stored
for this.
"""

from __future__ import annotations

from typing import Any, Union

import jax
import jax.numpy as jnp
import optax

from optax_neuronlr._src import paths as paths_lib
from optax_neuronlr._src import plateau
from optax_neuronlr._src import rate_sources


unwrap_variables = rate_sources.unwrap_variables


def has_rates(opt_state: Any) -> bool:
  """Whether ``opt_state`` holds a rate that the readers can show."""
  return bool(rate_sources.rate_sources(opt_state))


def leaf_paths(tree: Any, what: str = "the parameters") -> list[str]:
  """The ``"/"``-joined path of every leaf of ``tree``, each one unique.

  Raises:
    ValueError: when two leaves share a path string, e.g. the key ``"a/b"``
      beside ``{"a": {"b": ...}}``: every reader keys leaves by path, and one
      of the two would vanish from its output.
  """
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  paths = [paths_lib.path_str(p) for p, _ in flat]
  if len(set(paths)) < len(paths):
    clashes = [
        f"{path!r} (leaves " + " and ".join(
            jax.tree_util.keystr(k) for q, (k, _) in zip(paths, flat) if q == path) + ")"
        for path in sorted({p for p in paths if paths.count(p) > 1})
    ]
    raise ValueError(
        f"two leaves of {what} have the same '/'-joined path: "
        f"{', '.join(clashes)}. Paths name leaves in learning_rates, "
        "rate_summary, optimizer_layout and RateRecorder; rename the keys that "
        "contain '/'."
    )
  return paths


def learning_rates_by_state(opt_state: optax.OptState) -> dict[str, Any]:
  """The rates of `learning_rates`, one tree per rate source.

  A rate source is a node of ``opt_state`` that the applied rates are read
  from: a rule state (every per-unit strategy of the package), the rate that
  `muon` and `normuon` record for
  Muon and AdamW (`record_learning_rate`), or an
  ``optax.inject_hyperparams`` state with a ``learning_rate`` and no source
  inside (each group of ``param_groups(optax.adam, ...)``). Multipliers of
  `scale_by_leaf` in the same chain are applied.

  Args:
    opt_state: any optax state (possibly nested, or an ``nnx.Optimizer``'s).

  Returns:
    ``{path of the source inside opt_state: rates}``, where ``rates`` is
    shaped like the parameters with one per-unit array per leaf (``None`` for
    leaves the source does not govern, e.g. masked ones or another label's).
    Every leaf of `learning_rates` is in exactly one of them.

  Example:
    >>> import jax.numpy as jnp, optax_neuronlr as nlr
    >>> params = {"mlp": {"kernel": jnp.ones((4, 4))}, "bias": jnp.zeros(4)}
    >>> sorted(nlr.learning_rates_by_state(nlr.muon(0.02).init(params)))
    ['inner_states/adamw/inner_state/3', 'inner_states/hidden/inner_state/4']
  """
  return {s.path: s.rates for s in rate_sources.rate_sources(opt_state)}


def _merge(found: dict[str, Any]) -> Any:
  """One tree from several, each leaf from the one tree that has it."""
  trees = list(found.values())
  if len(trees) == 1:
    return trees[0]
  is_none = lambda x: x is None
  flats = [jax.tree.flatten(t, is_leaf=is_none) for t in trees]
  treedef = flats[0][1]
  if any(td != treedef for _, td in flats):
    raise ValueError(
        "strategies in opt_state govern differently structured trees "
        f"({sorted(found)}); use learning_rates_by_state."
    )
  merged = []
  for leaves in zip(*(f[0] for f in flats)):
    present = [x for x in leaves if x is not None]
    if len(present) > 1:
      raise ValueError(
          "several strategies govern the same leaf "
          f"({sorted(found)}); use learning_rates_by_state."
      )
    merged.append(present[0] if present else None)
  return treedef.unflatten(merged)


def learning_rates(opt_state: optax.OptState) -> optax.Params:
  """The per-unit rates that the last update applied, shaped like the params.

  Works on every optimizer of the package and on any nested optax state
  (chain, partition / multi_transform, masked, inject_hyperparams,
  MultiSteps, apply_if_finite, ...), on the ``opt_state`` of a Flax
  ``nnx.Optimizer`` as it is, and under ``jax.jit``. Where several sources
  govern disjoint parts of the parameters (e.g. two labels of
  ``optax.partition``), their rates are merged into one tree. The sources
  (`learning_rates_by_state`):

  * rule states (every per-unit strategy: NorMuon's per-neuron rate,
    Adam-mini's per-block rate, SCALE, the seed-000 rules, hypergradient
    descent, a user's `Rule`), their rates recomputed from the
    statistics and clamped to ``[min_lr, max_lr]``;
  * rates kept by `record_learning_rate`: `muon` shows Muon's
    rate (its scheduled ``learning_rate``) on each hidden leaf;
    `muon` and `normuon` show AdamW's rate on every other leaf
    (one unit per leaf);
  * plain optax optimizers under ``optax.inject_hyperparams``: with
    ``nlr.param_groups(optax.adam, groups)`` each leaf shows its group's
    injected ``learning_rate`` (a scalar, one unit per leaf), as PyTorch's
    ``param_groups[i]["lr"]``; a group whose optimizer keeps no per-leaf
    state (``optax.sgd`` without momentum) has nothing to read its leaves
    from: its leaves show ``None`` (``get_hyperparams`` has its rate).

  `scale_by_leaf` multipliers (layer-wise rates) multiply the rates of
  the chain they sit in. A schedule shows its value at the last update's step
  (before the first update: at step 0). The current rate of
  `reduce_lr_on_plateau` is `plateau_learning_rate`.

  Each leaf holds one value per unit: the leaf's shape at element
  granularity, the shape of its neuron axes at neuron granularity (``(out,)``
  for a Flax ``(in, out)`` kernel), ``(num_blocks,)`` for ``Blocks``, ``()`` at
  tensor granularity and for one rate per leaf; at ``granularity="global"``
  every leaf shows the one rate. Leaves that no source governs are ``None``.
  Before the first update, every unit of a rule shows
  ``clip(learning_rate, min_lr, max_lr)``.

  Args:
    opt_state: any optax state.

  Returns:
    A pytree of per-unit rates.

  Raises:
    ValueError: if ``opt_state`` holds no rate source (the message says so when ``opt_state`` looks restored from
      a checkpoint without a target), or two strategies govern the same leaf
      (use `learning_rates_by_state` then).

  Example:
    >>> import jax.numpy as jnp, optax_neuronlr as nlr
    >>> params = {"w": jnp.ones((3, 2))}
    >>> tx = nlr.grad_history_lr(1e-3, granularity="neuron")
    >>> nlr.learning_rates(tx.init(params))["w"].shape
    (2,)
  """
  found = learning_rates_by_state(opt_state)
  if not found:
    raise ValueError(
        "opt_state holds no per-unit learning-rate state of optax_neuronlr, no "
        "recorded rate (nlr.record_learning_rate) and no optax optimizer with an "
        "injected learning_rate whose state covers the parameters (param_groups, "
        "inject_hyperparams). " + _restored_hint(opt_state)
    )
  return _merge(found)


def _restored_hint(opt_state: Any) -> str:
  """A hint when ``opt_state`` looks like a checkpoint restored without a
  target (plain dicts and lists where optax's NamedTuples were)."""
  leaves = jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, tuple)
                           and hasattr(x, "_fields"))
  has_states = any(isinstance(x, tuple) and hasattr(x, "_fields") for x in leaves)
  if not has_states and jax.tree.leaves(opt_state):
    return ("It holds no optax state classes (only dicts, lists and arrays): "
            "was it restored from a checkpoint without a target? Restore it "
            "into target = jax.eval_shape(tx.init, params): orbax "
            "checkpointer.restore(path, target), flax "
            "serialization.from_state_dict(target, state_dict) or "
            "from_bytes(target, data) (README, \"Checkpoints\").")
  return ""


def leaf_rates(opt_state: optax.OptState) -> dict[str, tuple[jax.Array, jax.Array, jax.Array]]:
  """``{leaf key: (per-unit rates, min_lr, max_lr)}`` of every governed leaf.

  The leaves of `learning_rates` that are not ``None``, from the same
  rate sources. The key is the parameter's ``"/"``-joined path, whatever
  optax structure wraps the optimizer (chain, ``param_groups``,
  ``multi_transform``, ``masked``, ``inject_hyperparams``, ``MultiSteps``,
  ``scale_sgd``, ``muon``, ...): adding a group or a wrapper never renames a
  key. A rate without clamps (Muon's, AdamW's, a group's) has
  ``(min_lr, max_lr) = (0, inf)``; `scale_by_leaf` multiplies a leaf's
  clamps with its rates. When several sources govern the same parameter
  (say, two rules chained), the first one in ``opt_state``'s order keeps the
  path and the next ones get ``path#1``, ``path#2``, ... in that order.

  Args:
    opt_state: any optax state (possibly nested, or an ``nnx.Optimizer``'s).

  Returns:
    One ``(rates, min_lr, max_lr)`` per leaf that a strategy governs.

  Raises:
    ValueError: if two leaves of a state share a path string (a key
      containing ``"/"`` beside a nested one, see `leaf_paths`).
  """
  out = {}
  for source in rate_sources.rate_sources(opt_state):
    leaf_paths(source.rates, f"the rates of the state at {source.path or 'the root'!r}")
    for path, r, lo, hi in source.per_leaf():
      key = paths_lib.path_str(path)
      again = 0
      while key in out:
        again += 1
        key = f"{paths_lib.path_str(path)}#{again}"
      out[key] = (r, lo, hi)
  return out


def rate_summary(opt_state: optax.OptState) -> dict[str, jax.Array]:
  """Per-leaf statistics of the per-unit rates, flat, ready for any logger.

  For every leaf of `learning_rates` that is not ``None``, the keys
  ``"<parameter path>/<stat>"`` (``"Dense_0/bias/median"``) with ``stat`` one
  of ``min``, ``median``, ``max``, ``mean``, ``frac_at_min_lr`` and
  ``frac_at_max_lr`` (the fractions of units pinned at each clamp). The keys
  are the same whatever optax structure wraps the optimizer: alone, in a
  chain, in ``param_groups`` or ``multi_transform`` groups, under
  ``scale_sgd``, ``normuon``, ``muon``, ``MultiSteps`` or
  ``inject_hyperparams``; so adding a group, or switching from ``normuon``
  to ``muon``, renames no logged series. A leaf with one rate (Muon's, AdamW's,
  a group's) has ``min = median = max = mean``; its clamps are ``[0, inf)``. Where several rule states govern one parameter (two rules in a
  chain), the first in ``opt_state``'s order keeps the path and the next get
  ``"<path>#1/<stat>"``, ``"<path>#2/<stat>"``, ... Computed with ``jnp``
  only, so it runs inside ``jax.jit`` and returns scalar arrays.

  Args:
    opt_state: any optax state.

  Returns:
    ``{"path/stat": scalar}``, every value a strongly typed scalar of the
    default float dtype. A leaf with no rate units (a zero-size leaf at
    element or neuron granularity, e.g. shape ``(0,)`` or ``(3, 0)``) has no
    statistics and no keys; an empty tree gives ``{}``.

  Raises:
    ValueError: if two parameters share a ``"/"``-joined path (the key
      ``"a/b"`` beside ``{"a": {"b": ...}}``), which would merge their series.

  Example:
    >>> import jax.numpy as jnp, optax, optax_neuronlr as nlr
    >>> params = {"Dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}}
    >>> tx = nlr.param_groups(nlr.grad_history_lr, [
    ...     {"params": "Dense_0/kernel", "learning_rate": 1e-3},
    ...     {"params": "Dense_0/bias", "learning_rate": 1e-2}])
    >>> sorted(nlr.rate_summary(tx.init(params)))[:2]
    ['Dense_0/bias/frac_at_max_lr', 'Dense_0/bias/frac_at_min_lr']
  """
  out: dict[str, jax.Array] = {}
  dtype = jnp.result_type(float)
  for key, (r, lo, hi) in leaf_rates(opt_state).items():
    if not r.size:  # No units, nothing to summarise (and no NaN to log).
      continue
    at_lo, at_hi = r <= lo.astype(r.dtype), r >= hi.astype(r.dtype)
    r = r.astype(dtype)
    out[f"{key}/min"] = jnp.min(r)
    out[f"{key}/median"] = jnp.median(r)
    out[f"{key}/max"] = jnp.max(r)
    out[f"{key}/mean"] = jnp.mean(r)
    out[f"{key}/frac_at_min_lr"] = jnp.mean(at_lo.astype(dtype))
    out[f"{key}/frac_at_max_lr"] = jnp.mean(at_hi.astype(dtype))
  return out


def plateau_learning_rate(opt_state: optax.OptState) -> Union[jax.Array, dict[str, jax.Array]]:
  """The rate of `reduce_lr_on_plateau`: PyTorch's ``get_last_lr()``.

  One ``update(..., value=loss)`` steps with the current rate and then
  decides on a reduction, as PyTorch's ``optimizer.step()`` followed by
  ``scheduler.step(loss)``. This is the rate after that decision,
  ``ReduceLROnPlateauState.last_lr``: a reduction decided from the value
  passed to update ``t`` shows here right after update ``t``, as
  ``scheduler.get_last_lr()`` shows it after ``scheduler.step(loss)``, and it
  is the rate update ``t + 1`` applies (``learning_rate`` before the first
  update; a ``learning_rate`` changed by `set_hyperparams` in between
  shows after the next update, as a ``param_groups[i]["lr"]`` edit shows in
  ``get_last_lr()`` after the next ``scheduler.step``). The rate the last
  update applied is ``ReduceLROnPlateauState.applied_lr``. Found wherever
  the plateau transform sits in ``opt_state`` (a chain, a group, an
  ``nnx.Optimizer``).

  Args:
    opt_state: any optax state holding a ``scale_by_reduce_lr_on_plateau``.

  Returns:
    A scalar array when ``opt_state`` holds one plateau transform; else
    ``{path of the state inside opt_state: scalar}``.

  Raises:
    ValueError: if ``opt_state`` holds none.

  Example:
    >>> import jax.numpy as jnp, optax, optax_neuronlr as nlr
    >>> tx = optax.chain(optax.scale_by_adam(), nlr.reduce_lr_on_plateau(0.1))
    >>> float(nlr.plateau_learning_rate(tx.init({"w": jnp.ones(3)})))
    0.1...
  """
  is_plateau = lambda x: isinstance(x, plateau.ReduceLROnPlateauState)
  flat = jax.tree_util.tree_flatten_with_path(
      unwrap_variables(opt_state), is_leaf=is_plateau)[0]
  found = {paths_lib.path_str(p): s.last_lr for p, s in flat if is_plateau(s)}
  if not found:
    raise ValueError(
        "opt_state holds no reduce_lr_on_plateau state "
        "(nlr.scale_by_reduce_lr_on_plateau / nlr.reduce_lr_on_plateau)."
    )
  return next(iter(found.values())) if len(found) == 1 else found
