"""The study's figures: validation curves and the sensitivity to the peak rate, per task.

Drawn from the JSON-ready study alone; one panel per method family, written as
256-colour PNGs.
"""

from __future__ import annotations

import io
import pathlib
from typing import Any

import matplotlib
import matplotlib.ticker
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

from .settings import FAMILIES, SEED000_RULES  # pylint: disable=g-import-not-at-top
from .stats import seed_curves  # pylint: disable=g-import-not-at-top


# Line styles of the reference-000 variants (by key suffix); colours by rule.
STYLES = {" ref (constant)": ":", " ref": "--", " x adam": "-", " x muon": "-."}


def family_panels(task: dict[str, Any]) -> list[tuple[str, list[str]]]:
  """(title, method keys) per panel: baselines, then the other families."""
  by_family: dict[str, list[str]] = {}
  for key, m in task["methods"].items():
    by_family.setdefault(m["family"], []).append(key)
  known = [(f, by_family[f]) for f in FAMILIES if f in by_family]
  return known + [(f, names) for f, names in by_family.items() if f not in FAMILIES]


def line_style(name: str, index: int) -> dict[str, Any]:
  """A method's colour (its rule's, else the ``index``-th) and line style (its variant's)."""
  variant = next((v for v in STYLES if name.endswith(v)), None)
  rule = next((i for i, r in enumerate(SEED000_RULES) if name.startswith(r)), None)
  color = plt.get_cmap("tab10").colors[(rule if rule is not None else index) % 10]
  return {"color": color, "ls": STYLES.get(variant, "-")}


def panel_axes(n: int) -> tuple[plt.Figure, np.ndarray]:
  """A 2-column grid of ``n`` panels sharing the y axis, as a flat array."""
  rows = -(-n // 2)
  fig, axes = plt.subplots(rows, 2, figsize=(13, 4.8 * rows), sharey=True, squeeze=False,
                           layout="constrained")
  for ax in axes.flat[n:]:
    ax.set_axis_off()
  return fig, axes.flat[:n]


def band(curves: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Mean, min and max over runs (axis 0) of the finite values; NaN where none."""
  ok = np.isfinite(curves)
  count = ok.sum(0)
  safe = np.where(ok, curves, 0.0)
  mean = np.where(count > 0, safe.sum(0) / np.maximum(count, 1), np.nan)
  low = np.where(count > 0, np.where(ok, curves, np.inf).min(0), np.nan)
  high = np.where(count > 0, np.where(ok, curves, -np.inf).max(0), np.nan)
  return mean, low, high


def label_log_axis(ax: plt.Axes) -> None:
  """Labels the minor ticks too when the log axis spans less than a decade and a half."""
  low, high = ax.get_ylim()
  if 0 < low < high < 30 * low:
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.3g"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%.3g"))
    ax.tick_params(axis="y", which="minor", labelsize=7)


def plot_curves(name: str, task: dict[str, Any], path: pathlib.Path) -> None:
  """Validation loss at each method's chosen rate: mean over seeds, min-max band."""
  panels = family_panels(task)
  fig, axes = panel_axes(len(panels))
  steps = np.asarray(task["eval_steps"])
  target = None
  ref = task["methods"].get(task["target"].get("method"))
  if ref is not None:
    target = float(band(seed_curves(ref))[0][-1])  # NAdamW's final mean validation loss
  for ax, (title, names) in zip(axes, panels):
    for i, method in enumerate(names):
      style = line_style(method, i)
      mean, low, high = band(seed_curves(task["methods"][method]))
      ax.plot(steps, mean, lw=1.5, label=method, **style)
      ax.fill_between(steps, low, high, alpha=0.15, color=style["color"])
    if target is not None:
      ax.axhline(target, color="black", lw=0.8, ls="-.")
    ax.set_title(title, fontsize=10)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
  for ax in axes[::2]:
    ax.set_ylabel(f"validation {task['loss']}\n(mean over seeds, min-max band)")
  fig.suptitle(f"{task['title']}: each method at its chosen peak rate, warm-up-cosine "
               "schedule unless (constant); dash-dot: the target (scheduled NAdamW)",
               fontsize=11)
  finite = np.asarray([v for m in task["methods"].values() for run in m["seeds"]
                       for v in run["val_curve"]["loss"] if v is not None])
  finite = finite[finite > 0]
  if finite.size:
    axes[0].set_ylim(np.min(finite) * 0.8, min(np.max(finite), np.median(finite) * 30))
  label_log_axis(axes[0])
  save(fig, path)


def tuning_runs(m: dict[str, Any]) -> list[dict[str, Any]]:
  """A method's tuning runs (grid, extensions, refinement) at its chosen ratio."""
  ratio = m["summary"].get("ratio", 1.0)
  return [run for run in m["grid"] + m.get("extend", []) + m.get("refine", [])
          if run.get("ratio", 1.0) == ratio]


def plot_width(sweep: dict[str, Any], path: pathlib.Path) -> None:
  """The muP plot: final test loss against the peak rate, one curve per width, one panel
  per method (mean over the sweep's seeds; failed rates left out)."""
  widths = sorted(int(w) for w in sweep["widths"])
  keys = list(dict.fromkeys(k for w in widths for k, e in
                            sweep["widths"][str(w)]["methods"].items() if "rates" in e))
  fig, axes = panel_axes(max(1, len(keys)))
  colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.9, max(1, len(widths))))
  for ax, key in zip(axes, keys):
    for color, w in zip(colors, widths):
      e = sweep["widths"][str(w)]["methods"].get(key)
      if not e or "rates" not in e:
        continue
      test = np.asarray([[np.nan if v is None else v for v in row] for row in e["test"]])
      failed = np.asarray(e["failed"], bool).any(axis=0)
      loss = np.where(failed, np.nan, test.mean(axis=0))
      ax.plot(e["rates"], loss, marker="o", ms=3, color=color, label=f"d={w}")
      if np.isfinite(loss).any():
        i = int(np.nanargmin(np.where(np.isfinite(loss), loss, np.nan)))
        ax.plot([e["rates"][i]], [loss[i]], "*", color=color, ms=11)
    ax.set_xscale("log")
    ax.set_title(key, fontsize=10)
    ax.set_xlabel("peak rate")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
  for ax in axes[::2]:
    ax.set_ylabel("final test cross-entropy (nats/char)")
  finite = [v for w in widths for e in sweep["widths"][str(w)]["methods"].values()
            if "test" in e for row in e["test"] for v in row if v is not None]
  if finite:
    low = min(finite)
    axes[0].set_ylim(low * 0.97, min(max(finite), low * 1.6))
  fig.suptitle(f"Width sweep (char_lm, {sweep['steps']} steps): test loss against the "
               "peak rate, one curve per width (star: best)", fontsize=11)
  save(fig, path)


def plot_rates(name: str, task: dict[str, Any], path: pathlib.Path) -> None:
  """Final validation loss against the peak rate (seed 0: grid and refinement), every
  method; x: failed."""
  panels = family_panels(task)
  fig, axes = panel_axes(len(panels))
  finite = [run["final"]["val_loss"] for m in task["methods"].values()
            for run in tuning_runs(m) if not run["failed"]]
  top = max(finite) * 1.5 if finite else 1.0
  for ax, (title, names) in zip(axes, panels):
    ax.set_title(title, fontsize=10)
    names = [n for n in names if tuning_runs(task["methods"][n])]  # fixed rates: no grid
    if not names:
      ax.text(0.5, 0.5, "untuned (fixed rate) only", ha="center", transform=ax.transAxes)
      continue
    for i, method in enumerate(names):
      m = task["methods"][method]
      runs = sorted(tuning_runs(m), key=lambda run: run["rate"])
      rates = np.asarray([run["rate"] for run in runs])
      loss = np.asarray([np.nan if run["failed"] else run["final"]["val_loss"] for run in runs])
      style = line_style(method, i)
      ax.plot(rates, loss, marker="o", ms=3, lw=1.3, label=method, **style)
      failed = np.isnan(loss)
      ax.plot(rates[failed], np.full(failed.sum(), top), "x", color=style["color"], ms=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("peak rate")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
  for ax in axes[::2]:
    ax.set_ylabel(f"final validation {task['loss']} (seed 0)")
  label_log_axis(axes[0])
  fig.suptitle(f"{task['title']}: sensitivity to the peak rate, grid and refinement "
               "(x at the top: failed run)", fontsize=11)
  save(fig, path)


def save(fig: plt.Figure, path: pathlib.Path) -> None:
  """Writes ``fig`` as a 256-colour PNG (about a third of the RGBA size)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top (matplotlib's dependency)
  buffer = io.BytesIO()
  fig.savefig(buffer, dpi=80)
  plt.close(fig)
  image = Image.open(buffer).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
  image.save(path, optimize=True)
