"""Orbax checkpoints: params plus optimizer state of every registry entry are
saved and restored, and training resumed from the checkpoint continues bit for
bit as if it had not stopped."""

from __future__ import annotations

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests import registry

STEPS = 4


def _run(entry, tx, params, state, start, steps):
  step = jax.jit(registry.train_step(entry, tx))
  for k in range(start, start + steps):
    params, state, _ = step(params, state, k)
  return params, state


@pytest.mark.parametrize("entry", registry.ENTRIES, ids=lambda e: e.name)
def test_resume_from_orbax_checkpoint_is_bit_exact(entry, tmp_path):
  tx = entry.make()
  params = registry.QUADRATIC.init()
  straight = _run(entry, tx, params, tx.init(params), 0, 2 * STEPS)

  half = _run(entry, tx, params, tx.init(params), 0, STEPS)
  checkpointer = ocp.StandardCheckpointer()
  path = tmp_path / "ckpt"
  checkpointer.save(path, {"params": half[0], "opt_state": half[1]})
  checkpointer.wait_until_finished()
  target = {"params": jax.eval_shape(lambda: params),
            "opt_state": jax.eval_shape(tx.init, params)}
  restored = checkpointer.restore(path, target)
  assert jax.tree.structure(restored["opt_state"]) == jax.tree.structure(half[1])

  resumed = _run(entry, tx, restored["params"], restored["opt_state"], STEPS, STEPS)
  for got, want in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
