"""Resumes every registry entry from a checkpoint, in a fresh process.

``python -m tests.resume_helper DIR``: for each ``DIR/<entry>.ckpt.npz``
written by ``tests/test_resume.py`` (the params' and the optimizer state's
leaves after ``start`` steps), rebuilds the state's structure from a fresh
``tx.init``, loads the leaves into it, runs ``steps`` more jitted steps of
:func:`tests.registry.train_step` and writes ``DIR/<entry>.resumed.npz``.
"""

from __future__ import annotations

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

from tests import registry


def leaves_with_paths(tree) -> tuple[list[str], list[np.ndarray]]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return [jax.tree_util.keystr(p) for p, _ in flat], [np.asarray(x) for _, x in flat]


def save(path: pathlib.Path, params, state, start: int, steps: int) -> None:
  arrays = {}
  for prefix, tree in (("params", params), ("state", state)):
    names, values = leaves_with_paths(tree)
    arrays[f"{prefix}__paths"] = np.asarray(names, dtype=str)
    arrays.update({f"{prefix}__{i}": v for i, v in enumerate(values)})
  np.savez(path, start=start, steps=steps, **arrays)


def load(path: pathlib.Path, prefix: str, template):
  """The leaves stored under ``prefix``, in the structure of ``template``."""
  data = np.load(path)
  names, values = leaves_with_paths(template)
  stored = list(data[f"{prefix}__paths"])
  if stored != names:
    raise ValueError(f"{path.name}: {prefix} leaves {stored} != {names}")
  loaded = []
  for i, like in enumerate(values):
    x = data[f"{prefix}__{i}"]
    if x.dtype != like.dtype or x.shape != like.shape:
      raise ValueError(f"{path.name}: {names[i]} is {x.dtype}{x.shape}, want {like.dtype}{like.shape}")
    loaded.append(jnp.asarray(x))
  return jax.tree.unflatten(jax.tree.structure(template), loaded)


def resume(directory: pathlib.Path) -> int:
  done = 0
  for entry in registry.ENTRIES:
    ckpt = directory / f"{entry.name}.ckpt.npz"
    if not ckpt.exists():
      continue
    meta = np.load(ckpt)
    start, steps = int(meta["start"]), int(meta["steps"])
    tx = entry.make()
    template_params = registry.QUADRATIC.init()
    params = load(ckpt, "params", template_params)
    state = load(ckpt, "state", tx.init(template_params))
    step = jax.jit(registry.train_step(entry, tx))
    for k in range(start, start + steps):
      params, state, _ = step(params, state, k)
    save(directory / f"{entry.name}.resumed.npz", params, state, start + steps, 0)
    done += 1
  return done


if __name__ == "__main__":
  print(f"resumed {resume(pathlib.Path(sys.argv[1]))} entries")
