"""Does it help? Every method against the scheduled NAdamW, tuned like practitioners tune.

Study v3: every method trains under the schedule its users give it, its peak
rate tuned on a grid (extended where its best sits on the edge, then refined
around the best) with the rate picked on a validation split, then run from
fresh seeds and scored on a held-out test split; the target is NAdamW
(``optax.nadamw``, AlgoPerf's baseline) under the same schedule and tuning; each
verdict is Welch's test with its own degrees of freedom, Holm-corrected over the
task. A width sweep asks whether a rate tuned on a narrow model serves a wide one.

One command runs the study (or a part of it) and writes, under ``--out``
(default ``benchmarks/results/``, the committed study; with ``--quick``,
``benchmarks/results/quick/``, with ``--method-from``, ``benchmarks/results/user/``,
both git-ignored):

* ``convergence.json``: every run (rate, ratio, seed, validation curve, final
  validation and test scores, clamp fractions), each method's summary, each
  task's budget and command;
* ``summary.csv``: one row per task x steps x method x schedule, columns
  ``task,steps,method,schedule,rate,mean,std,seeds,bytes_per_param,
  steps_to_target,verdict,p_value`` (``rate`` the chosen peak rate; ``mean`` /
  ``std`` the final *test* loss over the seeds; ``steps_to_target`` empty where
  the target is never reached; ``verdict`` against the scheduled NAdamW, below;
  ``p_value`` Welch's two-sided p, uncorrected);
* ``convergence.md``: a summary table (every method x task, with the verdict and
  the Holm-corrected p), then one detailed table per task;
* ``curves_<task>.png`` and ``rates_<task>.png``: validation curves at each
  method's chosen rate, and final validation loss against the peak rate;
* with ``--widths``: ``width.json``, ``width.csv`` (``task,width,method,
  best_rate,best_loss,loss_at_small_rate,drift_decades``), ``width.md`` and
  ``width.png`` (``convergence_study/width.py``).

Partial runs merge: the tasks (and, within a task whose steps and evaluations
match, the methods) already in ``--out``'s JSON are kept, the ones run now
replace theirs, and the tables, the CSV and the figures are rewritten from the
merged JSON (``--replot`` rewrites them from the JSON alone). Parts run in
parallel processes each write to their own ``--out`` (``--without-target`` for
all but one) and are combined with ``--merge DIR``. A JSON of another format or
of the other mode (``--quick`` or not) is replaced. The previous study (v2:
target AdamW, validation scores, |t| > 2.2) is kept in ``benchmarks/results/v2/``.

Tasks (``convergence_study/tasks.py``, ``TASKS``; offline, sized for 2 CPU cores):

* ``digits``: the 64-64-64-10 MLP of ``examples/compare_strategies.py`` on
  scikit-learn's digits (train split cut into train and validation; its test
  split for the reported scores); 600 steps;
* ``rnn``: the GRU of ``examples/rnn_time_series.py`` on a multi-scale sum of
  sinusoids, its train/validation/test splits; 1500 steps;
* ``char_lm``: the character transformer of ``examples/char_lm.py`` on
  ``pydoc_data.topics`` (``CHAR_LM_SIZES``: d=32, 2 layers, 4 heads); the held-out
  topics cut in two: random validation windows from the first half, 480
  non-overlapping test windows from the second; 800 steps;
* ``char_lm_x3``: the same at 3x the steps (2400), for ``LONG_METHODS`` and every
  ``--method-from`` method, ``LONG_SEEDS`` (7) seeds. Its CSV rows read task
  ``char_lm``, steps 2400.

Methods (``convergence_study/methods.py``, ``builtin_methods()``), every one under
the warm-up-cosine schedule:

* ``nadamw`` (the target) and ``adamw`` (``optax.nadamw`` / ``optax.adamw``, weight
  decay 1e-4 on kernels and embeddings), ``adafactor``, ``sgd_momentum``;
* ``muon`` and ``normuon`` (``nlr.muon`` / ``nlr.normuon`` with their defaults:
  AdamW on embeddings, head, norms and biases at the Muon rate), and variants:
  ``adam_ratio`` (those leaves at ratio x the rate, the ratio tuned jointly from
  ``RATIOS`` = 0.3, 1, 3: every grid rate at every ratio), ``adam_nesterov``
  (NAdamW on those leaves), ``consistent_rms`` (Moonlight's scaling
  0.2 x sqrt(max(fan_in, fan_out)), on the Adam-like grid);
* ``adam_mini``, ``scale_sgd`` (SCALE), ``adam_hd`` (Adam-HD: the tuned number is
  its initial learned rate, the schedule multiplying its steps);
* ``nero`` (tuned) and ``nero (default rate)`` (untuned at 0.01, its paper's
  claim), ``lamb[neuron]`` and ``lamb[tensor]`` (``nlr.lamb``);
* each rule of reference 000 (``grad_magnitude_lr``, ``grad_history_lr``,
  ``sign_consistency_lr``) at granularity element and neuron: on the gradient
  (``ref``; also at a constant rate), on Adam's direction (``x adam``) and on
  Muon's direction (``x muon``, AdamW elsewhere at the rate), ``max_lr`` 10x the
  peak and bias correction for the last two.

Your own method, through the same protocol::

    python benchmarks/convergence.py --method-from mymodule:make_tx
    python benchmarks/convergence.py --method-from path/to/file.py:make_tx=mine --grid 1e-4 1e-1

``make_tx(learning_rate)`` receives the scheduled learning rate (an optax
schedule: the peak under test times the warm-up-cosine shape; the peak is
traced, so use it only in arithmetic) and returns an
``optax.GradientTransformation``. The method is named ``=name`` or after the
function (two of one name are an error); its grid is the Adam-like one unless
``--grid LO HI``. It runs on every selected task, the long run and the width
sweep included. ``--methods none`` runs only it (and NAdamW).

Protocol, the same for every task and method:

0. **Schedule.** ``optax.warmup_cosine_decay_schedule(0.0, peak, steps // 10,
   steps, 0.1 * peak)``; schedule ``constant``: the peak throughout.
1. **Grid.** ``GRID_POINTS`` (7) peak rates half a decade apart, placed by the
   method's kind (``RATE_RANGES``), times each of its ratios, seed 0, in one
   vmapped, jitted call. A run whose final validation loss is non-finite or
   above its initial one counts as failed and never wins. A grid whose losses
   are all equal is an error (its rate would tune nothing).
2. **Extension.** While the best rate sits on the tried rates' edge, two more
   rates beyond it (half a decade apart), at most ``EXTEND`` (2) times.
3. **Refinement.** The best rate times ``10**-0.25`` and ``10**0.25``; the best
   of all tuning runs (on the validation split) wins.
4. **Seeds.** The winning rate (and ratio) from ``SEEDS`` (7) fresh seeds; every
   reported score is their final *test* loss.
5. **Verdict.** Welch's t-test of the seeds' log test losses against NAdamW's
   (Welch-Satterthwaite degrees of freedom; ``scipy.stats.ttest_ind``), Holm's
   correction over the task's (task x steps) verdicts: *win* / *loss* where the
   corrected p is below ``ALPHA`` (0.05), else *tie*; *fails*: a seed failed.
6. **Steps to target.** Where the seeds' mean validation curve reaches NAdamW's
   final mean validation loss, interpolated linearly between evaluations and
   rounded up to 1% of the run.
7. **Cost.** Optimizer-state bytes per parameter (``jax.eval_shape``) and ms
   per training step of a single jitted run (median of ``TIMING_REPEATS``).

Run from the repository root::

    python benchmarks/convergence.py --quick --tasks '^digits$'  # a smoke test (results/quick/)
    python benchmarks/convergence.py --tasks '^char_lm$'         # one task at a time, merged
    python benchmarks/convergence.py --tasks '^char_lm_x3$'
    python benchmarks/convergence.py --widths 32 64 128 256     # the width sweep
    python benchmarks/convergence.py --tasks '^char_lm$' --methods nero --without-target --out /tmp/part
    python benchmarks/convergence.py --merge /tmp/part   # into benchmarks/results/
    python benchmarks/convergence.py --replot           # rewrite tables, CSV, figures

``--quick`` runs 2 grid rates, the 2 refinement rates and 2 seeds for 20 steps
(60 for ``char_lm_x3``), without grid extension, XLA's optimisations or the
dedicated timing; its numbers only show that everything runs.

The code is the package ``benchmarks/convergence_study/``, one job per module
(its ``__init__`` lists them; the constants are in its ``settings``); this file
is only the command line's entry point.
"""

from __future__ import annotations

import pathlib
import sys

HERE = str(pathlib.Path(__file__).resolve().parent)
if HERE not in sys.path:  # run as a script, benchmarks/ is on the path already
  sys.path.insert(0, HERE)

from convergence_study.cli import main  # pylint: disable=g-import-not-at-top,wrong-import-position

if __name__ == "__main__":
  main()
