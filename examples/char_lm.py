"""A character language model: AdamW against Adam-mini, SCALE, Muon and NorMuon, each at its best rate.

Trains a small Flax NNX causal transformer built from the standard modules
(``nnx.Embed`` for tokens and positions, pre-LayerNorm blocks of
``nnx.MultiHeadAttention`` and a two-layer ``nnx.Linear`` MLP, a final
``nnx.LayerNorm`` and an ``nnx.Linear`` output head) to predict the next
character of English text that ships with Python: the help topics of
``pydoc_data.topics`` (about 465k characters, ~100 distinct). Whole topics are
held out for validation (every tenth topic, ~10% of the text), so the
validation loss measures text the model never saw.

Five optimizers, each with the same model, initialisation, batches, number of
steps, warmup-cosine schedule and weight decay 0.1 on kernels and embeddings:

* ``optax.adamw`` (masked like Adam-mini: no decay on norm scales and biases);
* ``nlr.adam_mini``: one second moment per block (per head for query/key, per
  output neuron, per token), about half of AdamW's state;
* ``nlr.scale_sgd`` (SCALE): per-neuron normalised SGD, momentum on the output
  head only, AdamW on biases and norm scales;
* ``nlr.muon``: Muon's orthogonalised momentum on the hidden matrices
  (attention and MLP kernels), AdamW on embeddings, the head, norms and biases;
* ``nlr.normuon``: Muon's direction with one second moment per output neuron
  (NorMuon), AdamW on the same leaves as Muon.

Each optimizer's peak rate is picked from a sweep of the same size
(``SWEEP``; Muon and NorMuon, whose hidden-matrix updates have unit spectral
norm rather than unit RMS per element, sweep ``MUON_SWEEP``, the same three
points a decade higher, the range their authors use; their AdamW leaves run
at the best AdamW run's peak rate, as a user switching from AdamW would keep
it); the table gives every run's final
validation loss (the best of each optimizer marked), its optimizer-state bytes
and its step time (median of the jitted steps after compilation); the figure
shows the training and validation curves of each optimizer's best run and the
sweep. Nothing is tuned beyond the sweep; whatever the numbers are, they are
printed.

Run from the repository root::

    python examples/char_lm.py                  # ~5 minutes on 2 CPU cores
    python examples/char_lm.py --quick          # seconds: a tiny model, one rate each
    python examples/char_lm.py --steps 3000 --out /tmp/char_lm.png

The model and data code is importable (``sys.path.insert(0, "examples");
import char_lm``): :func:`load_corpus`, :class:`Config`, :class:`CharTransformer`,
:func:`make_batches`, :func:`optimizer`, :func:`train_run` and :func:`sweep`
are what a longer study (``benchmarks/convergence.py``) reuses.
"""

from __future__ import annotations

import argparse
import sys
import dataclasses
import os
import statistics
import time
from collections.abc import Sequence
from typing import Any, Optional

import jax
import jax.numpy as jnp
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

import optax_neuronlr as nlr

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _cli  # examples/_cli.py: shared checks  # pylint: disable=g-import-not-at-top,wrong-import-position

matplotlib.use("Agg")  # no display needed; no figure exists yet

METHODS = ("adamw", "adam_mini", "scale_sgd", "muon", "normuon")
MUON_METHODS = ("muon", "normuon")
SWEEP = (2e-3, 6e-3, 2e-2)  # peak rates, the same grid for every Adam-like method
MUON_SWEEP = (2e-2, 6e-2, 2e-1)  # as many points, for the orthogonalised updates
QUICK_SWEEP = (6e-3,)
QUICK_MUON_SWEEP = (6e-2,)
WEIGHT_DECAY = 0.1
COLORS = {"adamw": "tab:blue", "adam_mini": "tab:orange", "scale_sgd": "tab:green",
          "muon": "tab:red", "normuon": "tab:purple"}


# ---------------------------------------------------------------------------
# Data.


@dataclasses.dataclass(frozen=True)
class Corpus:
  """Characters as int32 ids: a training and a held-out validation stream."""

  train: np.ndarray
  val: np.ndarray
  vocab: str

  @property
  def vocab_size(self) -> int:
    return len(self.vocab)


def load_corpus(val_every: int = 10) -> Corpus:
  """``pydoc_data.topics``' help texts; every ``val_every``-th topic (sorted by
  name) is held out for validation. The vocabulary is every character of the
  whole text, so validation has no unknown characters."""
  from pydoc_data import topics  # pylint: disable=g-import-not-at-top

  names = sorted(topics.topics)
  train = "\n".join(topics.topics[n] for i, n in enumerate(names) if i % val_every)
  val = "\n".join(topics.topics[n] for i, n in enumerate(names) if not i % val_every)
  vocab = "".join(sorted(set(train + val)))
  index = {c: i for i, c in enumerate(vocab)}
  encode = lambda text: np.fromiter((index[c] for c in text), np.int32, len(text))
  return Corpus(encode(train), encode(val), vocab)


def make_batches(stream: np.ndarray, steps: int, batch: int, seq_len: int,
                 seed: int) -> np.ndarray:
  """``(steps, batch, seq_len + 1)`` random windows of ``stream`` (the model
  reads ``seq_len`` characters and predicts the next of each)."""
  rng = np.random.default_rng(seed)
  starts = rng.integers(0, len(stream) - seq_len - 1, size=(steps, batch))
  return stream[starts[..., None] + np.arange(seq_len + 1)]


# ---------------------------------------------------------------------------
# The model.


@dataclasses.dataclass(frozen=True)
class Config:
  """Model and training sizes (the defaults take ~5 minutes for the sweep on 2 cores)."""

  d_model: int = 48
  heads: int = 4
  layers: int = 2
  seq_len: int = 64
  batch: int = 16
  steps: int = 500
  warmup: int = 30
  eval_every: int = 50
  eval_batches: int = 8
  seed: int = 0


QUICK = Config(d_model=32, heads=2, layers=1, seq_len=32, batch=16, steps=30, warmup=5,
               eval_every=15, eval_batches=2)


class Block(nnx.Module):
  """Pre-LayerNorm transformer block: attention, then a 4x MLP."""

  def __init__(self, c: Config, rngs: nnx.Rngs):
    self.ln_1 = nnx.LayerNorm(c.d_model, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(num_heads=c.heads, in_features=c.d_model, decode=False,
                                       keep_rngs=False, rngs=rngs)
    self.ln_2 = nnx.LayerNorm(c.d_model, rngs=rngs)
    self.fc_in = nnx.Linear(c.d_model, 4 * c.d_model, rngs=rngs)
    self.fc_out = nnx.Linear(4 * c.d_model, c.d_model, rngs=rngs)

  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    x = x + self.attn(self.ln_1(x), mask=mask)
    return x + self.fc_out(jax.nn.gelu(self.fc_in(self.ln_2(x))))


class CharTransformer(nnx.Module):
  """Token and position embeddings (``nnx.Embed``), ``layers`` blocks, LayerNorm, head."""

  def __init__(self, c: Config, vocab_size: int, rngs: nnx.Rngs):
    self.embed = nnx.Embed(vocab_size, c.d_model, rngs=rngs)
    self.pos = nnx.Embed(c.seq_len, c.d_model, rngs=rngs)
    self.blocks = nnx.List([Block(c, rngs) for _ in range(c.layers)])
    self.ln_f = nnx.LayerNorm(c.d_model, rngs=rngs)
    self.head = nnx.Linear(c.d_model, vocab_size, rngs=rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    mask = nnx.make_causal_mask(tokens, dtype=jnp.bool_)
    x = self.embed(tokens) + self.pos(jnp.arange(tokens.shape[-1]))
    for block in self.blocks:
      x = block(x, mask)
    return self.head(self.ln_f(x))


def loss_fn(model: CharTransformer, batch: jax.Array) -> jax.Array:
  """Mean next-character cross-entropy (nats) of a ``(batch, seq_len + 1)`` window."""
  logits = model(batch[:, :-1])
  return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()


# ---------------------------------------------------------------------------
# Optimizers and training.


def schedule(peak: float, c: Config) -> optax.Schedule:
  return optax.warmup_cosine_decay_schedule(0.0, peak, c.warmup, c.steps, peak * 0.1)


def optimizer(method: str, peak: float, c: Config,
              adam_peak: Optional[float] = None) -> optax.GradientTransformation:
  """``method`` at peak rate ``peak``: warmup-cosine schedule, weight decay 0.1
  on kernels and embeddings (SCALE: on every matrix). Muon and NorMuon train
  their AdamW leaves at ``adam_peak`` (default ``peak``), on the same schedule."""
  lr = schedule(peak, c)
  if method in MUON_METHODS:
    adam_lr = schedule(peak if adam_peak is None else adam_peak, c)
    make = nlr.muon if method == "muon" else nlr.normuon
    return make(lr, weight_decay=WEIGHT_DECAY, adam_learning_rate=adam_lr,
                adam_weight_decay=WEIGHT_DECAY)
  if method == "adamw":
    return optax.adamw(lr, weight_decay=WEIGHT_DECAY, mask=nlr.adam_mini_weight_decay_mask)
  if method == "adam_mini":
    return nlr.adam_mini(lr, weight_decay=WEIGHT_DECAY)
  if method == "scale_sgd":
    return nlr.scale_sgd(lr, weight_decay=WEIGHT_DECAY)
  raise ValueError(f"method must be one of {METHODS}, got {method!r}.")


@nnx.jit
def train_step(model: CharTransformer, opt: nnx.Optimizer, batch: jax.Array) -> jax.Array:
  loss, grads = nnx.value_and_grad(loss_fn)(model, batch)
  opt.update(model, grads)
  return loss


@nnx.jit
def evaluate(model: CharTransformer, batches: jax.Array) -> jax.Array:
  """Mean loss over ``(n, batch, seq_len + 1)`` windows."""
  return jax.vmap(lambda b: loss_fn(model, b))(batches).mean()


@dataclasses.dataclass
class Run:
  """One training run: its curves and costs."""

  method: str
  peak_lr: float
  train_loss: list[float]  # every step
  val_steps: list[int]
  val_loss: list[float]
  state_bytes: int
  step_ms: float  # median of the jitted steps after the first (compiling) one

  @property
  def final_val(self) -> float:
    return self.val_loss[-1]


def nbytes(tree: Any) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree) if hasattr(x, "dtype"))


def train_run(method: str, peak: float, c: Config, corpus: Corpus, batches: np.ndarray,
              val_batches: np.ndarray, bar: Optional[tqdm] = None,
              adam_peak: Optional[float] = None) -> Run:
  """Trains a fresh :class:`CharTransformer` (seed ``c.seed``) on ``batches``."""
  model = CharTransformer(c, corpus.vocab_size, nnx.Rngs(c.seed))
  opt = nnx.Optimizer(model, optimizer(method, peak, c, adam_peak), wrt=nnx.Param)
  state_bytes = nbytes(nnx.state(opt, nnx.optimizer.OptState))
  val = jnp.asarray(val_batches)
  train_loss, val_steps, val_loss, times = [], [], [], []
  for k in range(c.steps):
    start = time.perf_counter()
    loss = float(train_step(model, opt, jnp.asarray(batches[k])))
    times.append(time.perf_counter() - start)
    train_loss.append(loss)
    if (k + 1) % c.eval_every == 0 or k + 1 == c.steps:
      val_steps.append(k + 1)
      val_loss.append(float(evaluate(model, val)))
      if bar is not None:
        bar.set_postfix(train=f"{loss:.3f}", val=f"{val_loss[-1]:.3f}")
    if bar is not None:
      bar.update(1)
  step_ms = 1e3 * statistics.median(times[1:] or times)
  return Run(method, peak, train_loss, val_steps, val_loss, state_bytes, step_ms)


def sweep(c: Config, corpus: Corpus, rates: Sequence[float] = SWEEP,
          methods: Sequence[str] = METHODS, bar: Optional[tqdm] = None,
          muon_rates: Sequence[float] = MUON_SWEEP) -> list[Run]:
  """Every method at every rate of its sweep, on the same batches (AdamW first:
  Muon's and NorMuon's AdamW leaves take its best peak rate)."""
  batches = make_batches(corpus.train, c.steps, c.batch, c.seq_len, c.seed)
  val = make_batches(corpus.val, c.eval_batches, c.batch, c.seq_len, c.seed + 1)
  order = sorted(methods, key=lambda m: m != "adamw")
  runs: list[Run] = []
  for method in order:
    adam_peak = None
    if method in MUON_METHODS:
      adamw = best_runs(runs).get("adamw")
      adam_peak = adamw.peak_lr if adamw is not None else None
    for peak in (muon_rates if method in MUON_METHODS else rates):
      if bar is not None:
        bar.set_description(f"{method} lr={peak:g}")
      runs.append(train_run(method, peak, c, corpus, batches, val, bar, adam_peak))
  return runs


def best_runs(runs: Sequence[Run]) -> dict[str, Run]:
  """Each method's run with the lowest final validation loss (NaN never wins)."""
  best: dict[str, Run] = {}
  for r in runs:
    score = r.final_val if np.isfinite(r.final_val) else np.inf
    if r.method not in best or score < best[r.method].final_val:
      best[r.method] = r
  return best


# ---------------------------------------------------------------------------
# Report.


def table(runs: Sequence[Run]) -> str:
  best = {id(r) for r in best_runs(runs).values()}
  base = next((r.state_bytes for r in runs if r.method == "adamw"), None)
  rows = [("optimizer", "peak lr", "val loss", "train loss (last 50)", "state bytes",
           "x adamw", "ms/step", "")]
  for r in runs:
    rows.append((r.method, f"{r.peak_lr:g}", f"{r.final_val:.4f}",
                 f"{np.mean(r.train_loss[-50:]):.4f}", f"{r.state_bytes:,}",
                 f"{r.state_bytes / base:.3f}" if base else "-", f"{r.step_ms:.2f}",
                 "best" if id(r) in best else ""))
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
  lines.insert(1, "  ".join("-" * w for w in widths))
  return "\n".join(lines)


def plot(runs: Sequence[Run], c: Config, out: str) -> None:
  best = best_runs(runs)
  fig, (ax_curve, ax_sweep) = plt.subplots(1, 2, figsize=(12, 4.5),
                                           gridspec_kw={"width_ratios": [2, 1]})
  window = max(1, min(50, c.steps // 10))
  for method, r in best.items():
    smooth = np.convolve(r.train_loss, np.ones(window) / window, mode="valid")
    ax_curve.plot(np.arange(window, len(r.train_loss) + 1), smooth, color=COLORS[method],
                  alpha=0.5, lw=1, label=f"{method} lr={r.peak_lr:g}: train (mean of {window})")
    ax_curve.plot(r.val_steps, r.val_loss, "o-", color=COLORS[method], lw=2, ms=3,
                  label=f"{method}: validation {r.final_val:.3f}")
  ax_curve.set_xlabel("step")
  ax_curve.set_ylabel("cross-entropy (nats per character)")
  ax_curve.set_title("best run of each optimizer", loc="left")
  ax_curve.grid(True, alpha=0.3)
  ax_curve.legend(fontsize=8)
  for method in best:
    rs = sorted((r for r in runs if r.method == method), key=lambda r: r.peak_lr)
    ax_sweep.plot([r.peak_lr for r in rs], [r.final_val for r in rs], "o-",
                  color=COLORS[method], label=method)
  ax_sweep.set_xscale("log")
  ax_sweep.set_xlabel("peak learning rate")
  ax_sweep.set_ylabel("final validation loss")
  ax_sweep.set_title("sweep", loc="left")
  ax_sweep.grid(True, alpha=0.3)
  ax_sweep.legend(fontsize=8)
  fig.suptitle(f"character LM on pydoc_data.topics: d={c.d_model}, {c.layers} layers, "
               f"{c.heads} heads, {c.steps} steps of {c.batch}x{c.seq_len} characters",
               fontsize=10)
  fig.tight_layout()
  fig.savefig(out, dpi=110)
  plt.close(fig)


def _positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
  return value


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--steps", type=_positive_int, default=None,
                 help=f"training steps per run (default {Config.steps}, "
                      f"{QUICK.steps} with --quick)")
  p.add_argument("--out", type=_cli.figure_path, default=_cli.default_figure("char_lm.png"),
                 help="where to write the figure (default: %(default)s)")
  p.add_argument("--quick", action="store_true",
                 help="a short run for tests: a tiny model, one rate per optimizer")
  return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
  args = parse_args(argv)
  c = QUICK if args.quick else Config()
  if args.steps is not None:
    c = dataclasses.replace(c, steps=args.steps, eval_every=max(1, args.steps // 10),
                            warmup=min(c.warmup, args.steps // 2))
  rates = QUICK_SWEEP if args.quick else SWEEP
  muon_rates = QUICK_MUON_SWEEP if args.quick else MUON_SWEEP
  corpus = load_corpus()
  print(f"pydoc_data.topics: {len(corpus.train):,} training and {len(corpus.val):,} "
        f"validation characters, {corpus.vocab_size} symbols; jax {jax.__version__} on "
        f"{jax.devices()[0].platform}")
  start = time.perf_counter()
  total = sum(len(muon_rates if m in MUON_METHODS else rates) for m in METHODS) * c.steps
  with tqdm(total=total, unit="step") as bar:
    runs = sweep(c, corpus, rates, METHODS, bar, muon_rates)
  wall = time.perf_counter() - start
  n = sum(x.size for x in jax.tree.leaves(nnx.state(
      CharTransformer(c, corpus.vocab_size, nnx.Rngs(0)), nnx.Param)))
  print(f"\n{len(runs)} runs of {c.steps} steps, {n:,} parameters, {wall:.0f} s "
        f"(sweep {', '.join(f'{r:g}' for r in rates)}; Muon and NorMuon "
        f"{', '.join(f'{r:g}' for r in muon_rates)})\n")
  print(table(runs))
  plot(runs, c, args.out)
  print(f"\nfigure written to {args.out}")


if __name__ == "__main__":
  main()
