"""The convergence study (``benchmarks/convergence.py``), one job per module.

Its protocol and outputs are documented in ``benchmarks/convergence.py``, the
command line's entry point. Modules, from the bottom up:

* ``settings``: every constant of the study (budget, rate ranges, schedule's end,
  ratios, the verdicts' family-wise level, the width sweep's sizes, family names)
  and the result folders;
* ``protocol``: the protocol's rules: the schedule, the rate grids, their
  extension at an edge, the refinement, the check that a grid tunes something,
  the :class:`~protocol.Budget`;
* ``tasks``: the tasks (data, a pure model, batching and scores) and ``TASKS``;
* ``methods``: the methods (``builtin_methods()``, ``--method-from``);
* ``training``: a method's training programs (whole runs, jitted and vmapped over
  rate and seed; the timing run) and their execution;
* ``costs``: optimizer-state bytes per parameter and ms per training step;
* ``tuning``: the protocol applied to one method (compile ahead, grid with its
  ratios, extension, refinement, seeds);
* ``stats``: each method's summary, the task's target, steps to it, the verdicts
  (Welch's test with its own degrees of freedom, Holm's correction);
* ``records``: the JSON form of the runs;
* ``tables``: ``summary.csv`` and ``convergence.md``;
* ``plots``: the figures;
* ``outputs``: the ``--out`` folder (the study to merge into, ``--merge``, every
  file written);
* ``run``: the study over tasks and methods, merged into the stored one;
* ``width``: the width sweep (``--widths``) and its files;
* ``retime``: ``--retime``;
* ``cli``: the command line.
"""
