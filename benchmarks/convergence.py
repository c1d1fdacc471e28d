"""Does it help? Every method against the scheduled AdamW, tuned like practitioners tune.

Study v2: every method trains under the schedule its users give it, its peak
rate tuned on a grid refined around the best point, then run from fresh seeds;
the reference is AdamW under the same schedule and tuning.

One command runs the study (or a part of it) and writes, under ``--out``
(default ``benchmarks/results/``, the committed study; with ``--quick``,
``benchmarks/results/quick/``, which git ignores):

* ``convergence.json``: every run (rate, seed, validation curve, final scores,
  clamp fractions), each method's summary, each task's budget and command;
* ``summary.csv``: one row per task x steps x method x schedule, columns
  ``task,steps,method,schedule,rate,mean,std,seeds,bytes_per_param,
  steps_to_target,verdict`` (``rate`` the chosen peak rate; ``mean``/``std``
  the final validation loss over the seeds; ``steps_to_target`` empty where the
  target is never reached; ``verdict`` against the scheduled AdamW, below);
* ``convergence.md``: a summary table (every method x task, with the verdict),
  then one detailed table per task;
* ``curves_<task>.png``: validation-loss curves at each method's chosen rate,
  mean over seeds with a min-max band;
* ``rates_<task>.png``: final validation loss against the peak rate (grid and
  refinement), every method, failed runs marked.

Partial runs merge: the tasks (and, within a task whose steps and evaluations
match, the methods) already in ``--out``'s JSON are kept, the ones run now
replace theirs, and the table, the CSV and the figures are rewritten from the
merged JSON (``--replot`` rewrites them from the JSON alone). So the full study
can run one task at a time, in separate processes. A JSON of another format or
of the other mode (``--quick`` or not) is replaced.

Tasks (``convergence_study/tasks.py``, ``TASKS``; offline, sized for 2 CPU cores), each importing its data and
model from the example that introduced it:

* ``digits``: the 64-64-64-10 MLP of ``examples/compare_strategies.py`` on
  scikit-learn's digits (its train split cut into train and validation; its
  test split kept for the test scores); 600 steps;
* ``rnn``: the GRU of ``examples/rnn_time_series.py`` (reference 000's case)
  predicting a multi-scale sum of sinusoids, its train/validation/test splits;
  1500 steps;
* ``char_lm``: the character transformer of ``examples/char_lm.py`` on
  ``pydoc_data.topics``, validation on its held-out topics (a smaller
  configuration than the example's, ``CHAR_LM_SIZES``); 800 steps;
* ``char_lm_x3``: the same task at 3x the steps (2400), for ``LONG_METHODS``
  only (AdamW, Adam-mini, SCALE, Muon, NorMuon) and ``LONG_SEEDS`` (3) seeds.
  In the CSV its rows read task ``char_lm``, steps 2400.

Methods (``convergence_study/methods.py``, ``builtin_methods()``), every one under the warm-up-cosine schedule:

* ``adamw`` (``optax.adamw``, weight decay 1e-4 on kernels and embeddings; the
  reference), ``adafactor`` (optax's defaults), ``sgd_momentum`` (momentum 0.9);
* ``muon`` and ``normuon`` (``nlr.muon`` / ``nlr.normuon``: Muon / NorMuon on
  the hidden matrices, AdamW on the rest);
* ``adam_mini``, ``scale_sgd`` (SCALE), ``adam_hd`` (Adam-HD);
* each rule of reference 000 (``grad_magnitude_lr``, ``grad_history_lr``,
  ``sign_consistency_lr``) at granularity element and neuron: on the gradient
  with the reference defaults (``ref``), on Adam's direction (``x adam``:
  ``bias_correction=True`` for the EMA rules, ``max_lr = 10 x`` the peak rate)
  and on Muon's direction (``x muon``: the same settings with
  ``direction=nlr.scale_by_muon()``, on the hidden matrices only, AdamW on the
  rest, through ``optax.partition`` and ``nlr.normuon_labels``). The ``ref``
  rules run a second time at a constant rate (schedule ``constant``: their
  rates are their own schedule), which is the study's first protocol plus the
  refinement.

Muon-family methods (``muon``, ``normuon``, the ``x muon`` rules): the tuned
peak is the hidden matrices' rate; their AdamW leaves (embeddings, the output
head, norms, biases) run at the scheduled AdamW's tuned peak rate on the same
task, under the same schedule shape (what a practitioner keeps). So ``adamw``
always runs first in a task: it is added to every run whose ``--out`` does not
already hold it for that task (then its stored rate is used).

Dropped from the first study (constant rates): plain ``sgd``, ``sgd_hd`` (both
far behind on the GRU and the transformer, and the sgd_hd comparison they
served is not the practitioner's question) and the ``+bc`` variants of the EMA
rules (within noise of ``ref``); their numbers stay in that study's history.

A method whose ``nlr`` names are missing (Muon's, until they land) is listed as
unavailable instead of run; one whose optimizer fails to build is reported
with its error, and the rest of the study goes on.

Your own method, through the same protocol::

    python benchmarks/convergence.py --method-from mymodule:make_tx
    python benchmarks/convergence.py --method-from path/to/file.py:make_tx --grid 1e-4 1e-1

``make_tx(learning_rate)`` receives the scheduled learning rate, an optax
schedule (step -> rate: the peak rate under test times the warm-up-cosine
shape; the peak is a traced value inside the vmapped runs, so use it only in
arithmetic) and returns an ``optax.GradientTransformation``. The method is
named after the function; its grid is the Adam-like one (``RATE_RANGES["adam"]``)
unless ``--grid LO HI`` (``GRID_POINTS`` rates from LO to HI, log-spaced).
``mymodule`` is imported from the current directory (or the path). Combine
with ``--methods none`` to run only it (and the reference AdamW).

Protocol, the same for every task and method (the peak rate is the only
hyperparameter tuned):

0. **Schedule.** ``optax.warmup_cosine_decay_schedule(0.0, peak, steps // 10,
   steps, 0.1 * peak)``: linear warm-up over the first 10% of the steps, then
   cosine decay to 10% of the peak (built as ``peak x`` the unit schedule, so
   that the peak can be traced). Schedule ``constant``: the peak throughout.
1. **Grid.** ``GRID_POINTS`` peak rates, half a decade apart (three decades),
   placed by the method's kind (``RATE_RANGES``), one run each from seed 0,
   all in one ``jax.vmap``-ed, jitted call (the rate is an argument of the
   traced run). A run whose final validation loss is non-finite or above its
   initial one counts as failed and never wins.
2. **Refinement.** The grid's best rate times ``10**-0.25`` and ``10**0.25``
   (quarter-decade neighbours), seed 0; the best of all 9 runs wins.
3. **Seeds.** The winning rate rerun from ``SEEDS`` fresh seeds (1, 2, ...;
   seed = initialisation and batch order). Every reported score comes from
   these runs.
4. **Cost.** Optimizer-state bytes per parameter (``jax.eval_shape`` of
   ``init``), and ms per training step (forward, backward, update) of a
   single jitted run of ``TIMING_STEPS`` steps in a ``lax.scan``, after
   compilation: the median of ``TIMING_REPEATS`` calls, each paired with a
   call of AdamW's for the ratio to it.

Rate ranges (``RATE_RANGES``, lowest and highest grid rate):

* ``"adam"`` 1e-4 .. 1e-1: AdamW, Adam-HD, Adam-mini, SCALE, the EMA rules on
  the gradient, user methods by default;
* ``"sgd"`` 1e-3 .. 1: SGD with momentum, Adafactor (relative steps), Muon and
  NorMuon (Muon's usual rate, ~0.02, lies inside, two points from each edge);
* ``"plain"`` 10**-2.5 .. 10**0.5: ``grad_magnitude_lr`` on the gradient
  (rates up to its ``max_lr`` of 1);
* ``"low"`` 1e-5 .. 1e-2: rules on Adam's direction, whose rates reach 10x
  the peak (a decade below Adam's range);
* ``"muon_rule"`` 1e-4 .. 1e-1: rules on Muon's direction, whose rates reach
  10x the peak (a decade below Muon's range).

The target of a task (at its steps) is the scheduled AdamW's final mean
validation loss. Reported per task and method: final validation loss (and
accuracy for digits), mean and std over seeds; the verdict (*win* / *loss*:
the seeds' log losses lower / higher than AdamW's by more than ``WELCH_T``
standard errors, Welch; else *tie*; *target* for AdamW; *fails*: a seed
failed); steps to target (the first evaluated step where the seeds' mean
validation curve reaches it); the sensitivity to the peak rate (max/min ratio
of the final validation losses of the non-failed grid and refinement runs, of
all of them and of those up to the chosen rate, and how many failed); state
bytes per parameter; ms/step; for methods with clamps, the fraction of units
at ``min_lr`` / ``max_lr`` at the end (``nlr.rate_summary``, mean over the
governed leaves and seeds).

Worker threads (``--jobs``) compile the methods' programs ahead; the programs
run one at a time in the main thread, and the timing runs once every method of
the task has finished.

Run from the repository root::

    python benchmarks/convergence.py --quick     # every task x method, a few min (results/quick/)
    python benchmarks/convergence.py --quick --out /tmp/conv   # the same, elsewhere
    python benchmarks/convergence.py --tasks '^digits$'         # one task at a time, merged
    python benchmarks/convergence.py --tasks '^rnn$'
    python benchmarks/convergence.py --tasks '^char_lm$'
    python benchmarks/convergence.py --tasks '^char_lm_x3$'
    python benchmarks/convergence.py --tasks digits --methods 'adamw|grad_history'
    python benchmarks/convergence.py --retime           # re-measure ms/step of --out's study
    python benchmarks/convergence.py --replot           # rewrite tables, CSV, figures from its JSON

``--quick`` (run by ``tests/test_convergence.py``) runs 2 grid rates, the 2
refinement rates and 2 seeds (one compiled program of 2 runs) for 20 steps
(60 for ``char_lm_x3``), compiles without XLA's optimisations and skips the
dedicated timing (its ms/step come from the vmapped seed runs); its numbers
only show that everything runs; without ``--out`` it writes to
``benchmarks/results/quick/`` (git-ignored), never over the committed study.

The code is the package ``benchmarks/convergence_study/``, one job per module
(its ``__init__`` lists them; the constants named above, ``GRID_POINTS``,
``RATE_RANGES``, ``WELCH_T`` and the others, are in its ``settings``); this file
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
