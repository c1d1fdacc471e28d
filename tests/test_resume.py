"""Checkpoint and resume, bit for bit, in a fresh process.

For every registry entry: a run of ``2N`` jitted steps, and the same run
stopped after ``N`` steps, its params' and state's leaves saved with
``np.savez``, restored by a NEW Python process (``tests/resume_helper.py``,
one process for all entries) into the structure of a fresh ``tx.init`` and run
``N`` more steps. Every leaf of the params and of the state must agree exactly.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests import registry
from tests import resume_helper

N = 5
ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """``{entry: (params, state) after 2N steps}``; checkpoints at N in a dir,
  resumed there by one fresh process."""
  directory = tmp_path_factory.mktemp("resume")
  straight = {}
  for entry in registry.ENTRIES:
    tx = entry.make()
    step = jax.jit(registry.train_step(entry, tx))
    params = registry.QUADRATIC.init()
    state = tx.init(params)
    for k in range(2 * N):
      if k == N:
        resume_helper.save(directory / f"{entry.name}.ckpt.npz", params, state, N, N)
      params, state, _ = step(params, state, k)
    straight[entry.name] = (params, state)
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(
      [str(ROOT), os.environ.get("PYTHONPATH", "")])}
  out = subprocess.run(
      [sys.executable, "-m", "tests.resume_helper", str(directory)],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-4000:]
  assert f"resumed {len(registry.ENTRIES)} entries" in out.stdout, out.stdout
  return directory, straight


def _cases():
  params = []
  for e in registry.ENTRIES:
    reason = e.xfail_reason("resume")
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
    params.append(pytest.param(e, id=e.name, marks=marks))
  return params


@pytest.mark.parametrize("entry", _cases())
def test_resume_in_fresh_process_is_bit_exact(runs, entry):
  directory, straight = runs
  params, state = straight[entry.name]
  path = directory / f"{entry.name}.resumed.npz"
  got_params = resume_helper.load(path, "params", params)
  got_state = resume_helper.load(path, "state", state)
  for what, want, got in (("params", params, got_params), ("state", state, got_state)):
    names, w = resume_helper.leaves_with_paths(want)
    _, g = resume_helper.leaves_with_paths(got)
    diff = [n for n, a, b in zip(names, w, g)
            if a.dtype != b.dtype or not np.array_equal(a, b, equal_nan=True)]
    assert not diff, f"{what} leaves differ after resuming: {diff}"
