"""Figures of per-unit learning rates (optional; needs matplotlib).

``import optax_neuronlr`` never imports matplotlib, and neither does importing
this module: matplotlib is imported by the first figure drawn. Every function
returns a ``matplotlib.figure.Figure`` built without pyplot (no global figure
state, nothing to close): save it with ``fig.savefig("rates.png")``, or let
Jupyter display it as a cell's value.

* `rate_histograms`: the distribution of per-unit rates, per layer;
* `rate_heatmap`: one layer's per-unit rates over training steps;
* `clamp_fractions`: the fractions of units pinned at ``min_lr`` and
  ``max_lr`` over training steps.

The last two read a `RateRecorder`.

Degenerate input gives a figure that says so rather than an error: an empty
tree or a recorder with nothing recorded yet draws an empty axes with a note;
leaves with no units, all-NaN rates, rates all at a clamp, and clamps at 0 or
``inf`` are drawn and noted in the titles.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Optional, Union

import jax
import numpy as np

from optax_neuronlr._src import paths as paths_lib
from optax_neuronlr._src import readers as inspect_lib
from optax_neuronlr._src import recorder as recorder_lib
from optax_neuronlr._src import validation

if TYPE_CHECKING:
  from matplotlib.figure import Figure

__all__ = ("clamp_fractions", "rate_heatmap", "rate_histograms")

_MIN_COLOR, _MAX_COLOR = "tab:blue", "tab:red"
# A clamp this many decades beyond the rates still gets a line on the x axis.
_BOUND_DECADES = 1.0


def _new_figure(width: float, height: float) -> Figure:
  try:
    from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "optax_neuronlr.plot needs matplotlib: pip install matplotlib"
    ) from e
  return Figure(figsize=(width, height), layout="constrained")


def _note_figure(title: str, note: str) -> Figure:
  """A figure with one empty axes that says why there is nothing to draw."""
  fig = _new_figure(5.0, 2.6)
  ax = fig.add_subplot()
  ax.text(0.5, 0.5, note, transform=ax.transAxes, ha="center", va="center",
          color="0.4", wrap=True)
  ax.set_xticks([])
  ax.set_yticks([])
  ax.set_title(title, fontsize=10)
  return fig


def _check_steps(steps: Any, length: int) -> Optional[np.ndarray]:
  """``steps`` as an array of ``length`` values (None stays None)."""
  if steps is None:
    return None
  steps = np.asarray(steps)
  if steps.shape != (length,):
    raise ValueError(
        f"steps must hold one value per recorded step ({length}), got shape "
        f"{steps.shape}."
    )
  return steps


def _log_range(values: np.ndarray) -> tuple[float, float]:
  """Positive ``(lo, hi)`` around ``values``, a little wider when they agree."""
  lo, hi = float(np.min(values)), float(np.max(values))
  if lo == hi:
    return lo / 2.0, hi * 2.0
  return lo, hi


def _short_log_ticks(axis: Any, lo: float, hi: float) -> None:
  """Few, plainly written ticks on a log ``axis`` spanning ``[lo, hi]``."""
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top

  decades = math.log10(hi / lo)
  if decades < 0.5:
    subs = tuple(float(s) for s in range(1, 10))
  elif decades < 1.5:
    subs = (1.0, 2.0, 5.0)
  else:
    subs = (1.0,)
  axis.set_major_locator(ticker.LogLocator(subs=subs, numticks=6))
  axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:.3g}"))
  axis.set_minor_formatter(ticker.NullFormatter())


# Histograms.


def _histogram_data(
    source: Any,
) -> dict[str, tuple[np.ndarray, Optional[float], Optional[float]]]:
  """``{leaf key: (rates, min_lr or None, max_lr or None)}`` on the host."""
  if isinstance(source, recorder_lib.RateRecorder):
    if source.leaves is None:
      raise ValueError("the recorder holds no per-unit rates (see leaves=...).")
    if not len(source) or not source.paths:
      return {}  # Nothing recorded yet: an empty figure.
    out = {}
    for p in source.paths:
      lo, hi = (float(b) for b in source.bounds(p)[-1])
      out[p] = (source.rates(p)[-1], lo, hi)
    return out
  if inspect_lib.has_rates(source):
    found = jax.device_get(recorder_lib.leaf_rates(source))
    return {k: (np.asarray(r), float(lo), float(hi)) for k, (r, lo, hi) in found.items()}
  flat, _ = jax.tree_util.tree_flatten_with_path(source)
  return {
      paths_lib.path_str(p): (np.asarray(jax.device_get(r)), None, None)
      for p, r in flat
  }


def _clamp_notes(rates: np.ndarray, lo, hi) -> list[tuple[float, str, str, float]]:
  """``(bound, name, color, fraction of units at it)`` of each clamp given."""
  out = []
  for bound, name, color in ((lo, "min_lr", _MIN_COLOR), (hi, "max_lr", _MAX_COLOR)):
    if bound is None:
      continue
    at = rates <= bound if name == "min_lr" else rates >= bound
    out.append((bound, name, color, float(np.mean(at)) if rates.size else 0.0))
  return out


def _draw_histogram(ax, key, rates, lo, hi, bins, log) -> None:
  rates = np.asarray(rates, np.float64)
  values = rates.ravel()
  finite = values[np.isfinite(values)]
  notes = [f"{rates.size} units"]
  if finite.size < values.size:
    notes.append(f"{values.size - finite.size} not finite")
  shown = finite[finite > 0] if log else finite
  if log and shown.size < finite.size:
    notes.append(f"{finite.size - shown.size} <= 0 not shown")
  clamps = _clamp_notes(rates, lo, hi)
  if shown.size:
    a, b = _log_range(shown) if log else (shown.min(), shown.max())
    bins = min(bins, max(5, 2 * math.ceil(math.sqrt(shown.size))))
    if shown.min() == shown.max():
      bins += 1 - bins % 2  # An odd number: the one value sits mid-bin.
    edges = (np.geomspace(a, b, bins + 1) if log
             else np.linspace(a, b if b > a else a + 1, bins + 1))
    ax.hist(shown, bins=edges, color="0.35", edgecolor="white", linewidth=0.3)
    if log:
      ax.set_xscale("log")
    left, right = ax.get_xlim()
    for bound, name, color, _ in clamps:
      if not math.isfinite(bound):
        continue  # max_lr = inf: no clamp to draw.
      near = (
          (bound > 0 and math.log10(left) - _BOUND_DECADES <= math.log10(bound)
           <= math.log10(right) + _BOUND_DECADES)
          if log else True
      )
      if near:
        ax.axvline(bound, color=color, linestyle="--", linewidth=1.2, label=name)
    if log:
      _short_log_ticks(ax.xaxis, *ax.get_xlim())
  else:
    reason = ("no units" if not rates.size else "no finite rate" if not finite.size
              else "no positive rate for a log axis")
    ax.text(0.5, 0.5, reason, transform=ax.transAxes, ha="center", va="center",
            color="0.4", fontsize=8)
  if rates.size:
    notes.extend(f"{frac:.0%} at {name}" for _, name, _, frac in clamps)
  ax.set_title(f"{key}\n" + ", ".join(notes), fontsize=8)
  ax.tick_params(labelsize=7)


def rate_histograms(
    rates_or_opt_state: Any,
    *,
    leaves: Optional[str] = None,
    bins: int = 30,
    log: bool = True,
    ncols: int = 4,
    max_leaves: int = 24,
) -> Figure:
  """Histograms of the per-unit learning rates, one small axes per leaf.

  Args:
    rates_or_opt_state: an optimizer state (any nesting, or an
      ``nnx.Optimizer``'s; then ``min_lr`` and ``max_lr`` are drawn as dashed
      lines and the fractions of units at each are given), a rates tree as
      `learning_rates` returns (``None`` leaves are
      skipped), a flat ``{path: rates}`` dict, or a
      `RateRecorder` (its last recorded step).
    leaves: a regular expression (str or compiled); only the leaves it
      selects by the package's path rule (it matches the whole path or a
      ``"/"``-prefix of it, as for `RateRecorder`).
    bins: most bins per histogram (a leaf of ``n`` units gets at most
      ``max(5, 2 * ceil(sqrt(n)))``).
    log: log-spaced bins on a log x axis (non-positive rates are left out and
      counted in the title).
    ncols: axes per row.
    max_leaves: at most this many leaves (the first ones) are drawn.

  Returns:
    A matplotlib Figure; for an empty tree, or a recorder with nothing
    recorded yet, one empty axes with a note.

  Raises:
    ValueError: when ``leaves`` matches none of the leaves there are, or the
      recorder records no per-unit rates (``leaves=None``).

  Example:
    >>> import jax.numpy as jnp, optax_neuronlr as nlr
    >>> from optax_neuronlr import plot
    >>> params = {"w": jnp.ones((3, 4)), "b": jnp.zeros(4)}
    >>> tx = nlr.sign_consistency_lr(1e-2, granularity="neuron")
    >>> state = tx.init(params)  # ... after some training steps
    >>> fig = plot.rate_histograms(state)
    >>> fig.savefig("rates.png")  # doctest: +SKIP
  """
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top

  bins = validation.check_int("bins", bins, low=1)
  ncols = validation.check_int("ncols", ncols, low=1)
  max_leaves = validation.check_int("max_leaves", max_leaves, low=1)
  log = validation.check_flag("log", log)
  data = _histogram_data(rates_or_opt_state)
  title = "Per-unit learning rates"
  if not data:
    return _note_figure(title, "no per-unit rates to plot (an empty tree, or "
                        "nothing recorded yet)")
  if leaves is not None:
    selector = paths_lib.Selector(leaves, "rate_histograms leaves")
    data = {k: v for k, v in data.items() if selector.selects(k)}
    if not data:
      raise ValueError(f"no leaf path matches leaves={leaves!r}.")
  total = len(data)
  keys = list(data)[:max_leaves]
  ncols = max(1, min(ncols, len(keys)))
  nrows = math.ceil(len(keys) / ncols)
  fig = _new_figure(3.0 * ncols, 2.3 * nrows + 0.4)
  axes = fig.subplots(nrows, ncols, squeeze=False)
  for i, ax in enumerate(axes.flat):
    if i >= len(keys):
      ax.set_visible(False)
      continue
    rates, lo, hi = data[keys[i]]
    _draw_histogram(ax, keys[i], rates, lo, hi, bins, log)
    ax.yaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    if i % ncols == 0:
      ax.set_ylabel("units", fontsize=8)
    if i + ncols >= len(keys):
      ax.set_xlabel("learning rate", fontsize=8)
  if total > len(keys):
    title += f" (first {len(keys)} of {total} leaves; choose with leaves=...)"
  fig.suptitle(title, fontsize=10)
  handles, labels = axes.flat[0].get_legend_handles_labels()
  for ax in axes.flat[1:]:
    for h, l in zip(*ax.get_legend_handles_labels()):
      if l not in labels:
        handles.append(h)
        labels.append(l)
  if handles:
    fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize=8)
  return fig


# Heatmap.


def rate_heatmap(
    recorder_or_array: Union[recorder_lib.RateRecorder, np.ndarray, jax.Array],
    path: Optional[str] = None,
    *,
    steps: Optional[np.ndarray] = None,
    log: bool = True,
    sort_units: bool = False,
    min_lr: Optional[float] = None,
    max_lr: Optional[float] = None,
) -> Figure:
  """Per-unit learning rates of one leaf over training steps, units x steps.

  The color scale spans the rates that are not clamped; units pinned at
  ``max_lr`` are drawn red and units pinned at ``min_lr`` black (the
  colorbar's end arrows), so a layer stuck at a clamp shows at a glance.

  Args:
    recorder_or_array: a `RateRecorder` that recorded
      the rates of ``path`` (it also recorded ``min_lr`` and ``max_lr``), or an
      array ``(steps, *unit_shape)``.
    path: the leaf's path (one of ``recorder.paths``); optional when the
      recorder holds one leaf, or with an array (then it is the title).
    steps: the step of each row of an array (default ``0, 1, ...``).
    log: logarithmic color scale.
    sort_units: order the units by their last rate instead of their index.
    min_lr: the lower clamp, if not taken from the recorder.
    max_lr: the upper clamp, if not taken from the recorder (``inf``: none).

  Returns:
    A matplotlib Figure; with nothing recorded yet, or a leaf without units,
    one empty axes with a note. Where no rate is positive (e.g. every unit at
    ``min_lr = 0``), the color scale is linear even with ``log=True``.

  Raises:
    ValueError: for an array with no step axis, ``steps`` of the wrong length,
      a recorder that records no per-unit rates (``leaves=None``), or a
      missing ``path`` when the recorder holds several leaves.
    KeyError: for a ``path`` the recorder did not record.

  Example:
    >>> from optax_neuronlr import plot
    >>> recorder = nlr.RateRecorder(leaves=r".*kernel")  # doctest: +SKIP
    >>> # ... recorder.record(step, opt_state) in the training loop
    >>> fig = plot.rate_heatmap(recorder, "Dense_0/kernel")  # doctest: +SKIP
  """
  from matplotlib import colormaps  # pylint: disable=g-import-not-at-top

  log = validation.check_flag("log", log)
  sort_units = validation.check_flag("sort_units", sort_units)
  validation.check_range("min_lr", min_lr, low=0.0, allow_none=True)
  validation.check_range("max_lr", max_lr, low=0.0, allow_inf=True, allow_none=True)
  lo = hi = None
  if isinstance(recorder_or_array, recorder_lib.RateRecorder):
    recorder = recorder_or_array
    if recorder.leaves is None:
      raise ValueError("the recorder holds no per-unit rates (see leaves=...).")
    if path is None:
      if not recorder.paths:
        return _note_figure("rates", "nothing recorded yet")
      if len(recorder.paths) != 1:
        raise ValueError(
            f"choose path among the recorded leaves {list(recorder.paths)}."
        )
      path = recorder.paths[0]
    rates, steps = recorder.rates(path), recorder.steps
    lo, hi = recorder.bounds(path).T  # Per step: clamps may be scheduled.
  else:
    rates = np.asarray(jax.device_get(recorder_or_array))
  if rates.ndim < 1:
    raise ValueError(f"need rates of shape (steps, *units), got {rates.shape}.")
  steps = _check_steps(steps, rates.shape[0])
  num_units = math.prod(rates.shape[1:])
  if not rates.shape[0] or not num_units:
    what = "no steps recorded" if not rates.shape[0] else "the leaf has no units"
    return _note_figure(
        f"{path or 'rates'}: {num_units} units, {rates.shape[0]} steps", what)
  lo = lo if min_lr is None else np.full(rates.shape[0], float(min_lr))
  hi = hi if max_lr is None else np.full(rates.shape[0], float(max_lr))
  steps = np.arange(rates.shape[0]) if steps is None else steps
  data = rates.reshape(rates.shape[0], -1).astype(np.float64).T  # units x steps
  if sort_units:
    data = data[np.argsort(data[:, -1], kind="stable")]

  pinned = np.zeros(data.shape, bool)
  if lo is not None:
    pinned |= data <= lo
  if hi is not None:
    pinned |= data >= hi
  requested_log = log
  norm, log = _heatmap_norm(data, pinned, lo, hi, log)
  shown = data.copy()
  shown[pinned & (data >= (hi if hi is not None else np.inf))] = np.inf
  shown[pinned & (data <= (lo if lo is not None else -np.inf))] = -np.inf

  cmap = colormaps["viridis"].with_extremes(
      over=_MAX_COLOR, under="black", bad="0.75"
  )
  fig = _new_figure(7.0, 3.6)
  ax = fig.add_subplot()
  units = np.arange(data.shape[0])
  mesh = ax.pcolormesh(
      steps, units, np.ma.masked_invalid(np.clip(shown, -1e300, 1e300)),
      norm=norm, cmap=cmap, shading="nearest", rasterized=True,
  )
  extend = {(False, False): "neither", (True, False): "min",
            (False, True): "max", (True, True): "both"}[
                (lo is not None, hi is not None)]
  bar = fig.colorbar(mesh, ax=ax, pad=0.02, extend=extend, extendfrac=0.08)
  label = "learning rate"
  marks = [name for name, b in (("min_lr: black", lo), ("max_lr: red", hi)) if b is not None]
  if not log and requested_log:
    marks.append("linear: no positive rate")
  bar.set_label(label + (f" ({', '.join(marks)})" if marks else ""))
  if log:
    _short_log_ticks(bar.ax.yaxis, norm.vmin, norm.vmax)
  ax.set_xlabel("step")
  ax.set_ylabel("unit (sorted by last rate)" if sort_units else "unit")
  if data.shape[0] <= 16:
    ax.set_yticks(units)
  notes = [f"{data.shape[0]} units", f"{data.shape[1]} steps"]
  if pinned.any():
    notes.append(f"{pinned.mean():.0%} of cells clamped")
  if not np.isfinite(data).all():
    notes.append(f"{np.size(data) - np.isfinite(data).sum()} cells not finite (grey)")
  ax.set_title(f"{path or 'rates'}: " + ", ".join(notes), fontsize=10)
  return fig


def _heatmap_norm(data, pinned, lo, hi, log) -> tuple[Any, bool]:
  """The color scale, and whether it is logarithmic.

  It spans the finite rates that are not clamped (positive ones on a log
  scale); with every unit clamped, the finite (positive) clamps themselves;
  else whatever finite rates there are. A log scale without a positive value
  to span becomes linear.
  """
  from matplotlib import colors  # pylint: disable=g-import-not-at-top

  finite = data[np.isfinite(data)]
  usable = lambda v: v[np.isfinite(v) & (v > 0)] if log else v[np.isfinite(v)]
  free = usable(data[~pinned])
  if not free.size:  # Every unit clamped: scale on the clamps themselves.
    ends = np.asarray(
        [np.min(lo), np.max(hi)] if lo is not None and hi is not None else [],
        np.float64)
    free = usable(ends)
    if free.size < 2:
      free = usable(finite)
  if log and free.size:
    return colors.LogNorm(*_log_range(free)), True
  if not free.size:
    free = finite
  a, b = (free.min(), free.max()) if free.size else (0.0, 1.0)
  return colors.Normalize(a, b if b > a else a + 1), False


# Clamp fractions.


def _fraction_series(
    summaries: Mapping[str, np.ndarray],
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """``{leaf key: (frac_at_min_lr, frac_at_max_lr)}`` over steps."""
  out = {}
  for key in summaries:
    if key.endswith("/frac_at_min_lr"):
      leaf = key[: -len("/frac_at_min_lr")]
      other = f"{leaf}/frac_at_max_lr"
      if other in summaries:
        pair = tuple(np.atleast_1d(np.asarray(jax.device_get(summaries[k]), np.float64))
                     for k in (key, other))
        if pair[0].shape != pair[1].shape or pair[0].ndim != 1:
          raise ValueError(
              f"{key} and {other} must be equally long series of scalars, got "
              f"shapes {pair[0].shape} and {pair[1].shape}."
          )
        out[leaf] = pair
  return out


def clamp_fractions(
    recorder_or_summaries: Union[recorder_lib.RateRecorder, Mapping[str, Any]],
    *,
    steps: Optional[np.ndarray] = None,
    max_leaves: int = 8,
) -> Figure:
  """Fractions of units pinned at ``min_lr`` and at ``max_lr`` over steps.

  One line per leaf; with more than ``max_leaves`` leaves, the mean over leaves
  and the band between the lowest and the highest leaf instead. A strategy
  whose units all sit at a clamp has stopped adapting its rates: e.g. every
  unit at ``max_lr`` is plain SGD at rate ``max_lr``.

  Args:
    recorder_or_summaries: a `RateRecorder` that
      recorded summaries, or ``{"path/stat": values over steps}`` with the
      ``frac_at_min_lr`` and ``frac_at_max_lr`` stats of
      `rate_summary` (e.g. ``recorder.summaries()``, a
      logger's history, or one step's ``rate_summary`` itself).
    steps: the step of each value (default: the recorder's steps, else
      ``0, 1, ...``).
    max_leaves: above this many leaves, draw their mean and range.

  Returns:
    A matplotlib Figure; with nothing recorded yet, one empty axes with a note.

  Raises:
    ValueError: for summaries without the two fraction stats, series of
      different lengths, ``steps`` of the wrong length, or a recorder that
      records no summaries.

  Example:
    >>> from optax_neuronlr import plot
    >>> history = {"w/frac_at_min_lr": [0.0, 0.0, 0.5],
    ...            "w/frac_at_max_lr": [1.0, 0.5, 0.0]}
    >>> fig = plot.clamp_fractions(history)
  """
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top

  max_leaves = validation.check_int("max_leaves", max_leaves, low=1)
  title = "units at min_lr / max_lr"
  if isinstance(recorder_or_summaries, recorder_lib.RateRecorder):
    if not recorder_or_summaries.summary:
      raise ValueError("the recorder records no summaries (summary=False).")
    summaries = recorder_or_summaries.summaries()
    if steps is None:
      steps = recorder_or_summaries.steps
  else:
    summaries = recorder_or_summaries
  if not summaries:
    return _note_figure(title, "nothing recorded yet")
  series = _fraction_series(summaries)
  if not series:
    raise ValueError("no '<path>/frac_at_min_lr' and '<path>/frac_at_max_lr' entries.")
  lengths = {len(fracs[0]) for fracs in series.values()}
  if len(lengths) > 1:
    raise ValueError(f"the leaves' series differ in length: {sorted(lengths)}.")
  length = lengths.pop()
  if not length:
    return _note_figure(title, "nothing recorded yet")
  steps = _check_steps(steps, length)
  steps = np.arange(length) if steps is None else steps
  marker = "o" if length <= 30 else None

  fig = _new_figure(8.0, 3.2)
  axes = fig.subplots(1, 2, sharey=True)
  for i, (ax, name) in enumerate(zip(axes, ("min_lr", "max_lr"))):
    if len(series) <= max_leaves:
      for leaf, fracs in series.items():
        ax.plot(steps, fracs[i], marker=marker, markersize=3, label=leaf, alpha=0.85)
    else:
      stacked = np.stack([fracs[i] for fracs in series.values()])
      ax.fill_between(steps, stacked.min(0), stacked.max(0), alpha=0.25,
                      color="0.4", label=f"range over {len(series)} leaves")
      ax.plot(steps, stacked.mean(0), color="k", marker=marker, markersize=3,
              label=f"mean over {len(series)} leaves")
    if all(not np.any(fracs[i]) for fracs in series.values()):
      ax.text(0.5, 0.5, f"no unit at {name}", transform=ax.transAxes,
              ha="center", va="center", color="0.4")
    ax.set_title(f"units at {name}", fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylim(-0.03, 1.03)
    ax.yaxis.set_major_formatter(ticker.PercentFormatter(1.0))
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("fraction of units")
  handles, labels = axes[0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="outside right upper", fontsize=8)
  return fig
