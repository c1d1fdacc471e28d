"""Shared fixtures: a nested Flax-style parameter tree and its gradients.

The suite compiles without XLA's optimisations: compilation is most of its
time, and the programs are the same (about 30% less time on 2 CPU cores). Set
here, before JAX starts, so that the processes the tests start (examples,
notebooks, the multi-process and sharded runs) inherit it;
``JAX_DISABLE_MOST_OPTIMIZATIONS=0 pytest`` runs the suite optimised. XLA's
CPU compiler is set for compile time too (``XLA_FLAGS`` below: one kernel
thread per process, one worker per core, and the LLVM IR fusion emitters); a
flag the caller already set in ``XLA_FLAGS`` is left as it is.
"""

from __future__ import annotations

import gc
import os

os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
# XLA's CPU compiler, tuned for compile time (a flag already in XLA_FLAGS
# wins): one thread per process for the kernels (the suite runs one worker per
# core, and the tests' arrays are tiny: threads only contend); fusions emitted
# by the LLVM IR emitters rather than the MLIR fusion emitters (the same
# programs; about 45% less CPU on the contract tests, which spent it compiling
# on extra threads); LLVM's expensive passes off.
_XLA_TEST_FLAGS = {
    "xla_cpu_multi_thread_eigen": "false",
    "xla_cpu_use_fusion_emitters": "false",
    "xla_llvm_disable_expensive_passes": "true",
}
for _flag, _value in _XLA_TEST_FLAGS.items():
  if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --{_flag}={_value}".strip()

import jax  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp
import numpy as np
import pytest

import optax_neuronlr as nlr

# Tracing makes many short-lived objects: a larger first generation and the
# imported modules' objects out of the collector's sight (gc.freeze) take
# about 10% off the compile-bound tests' time.
gc.freeze()
gc.set_threshold(50_000, 20, 20)

ALIASES = {
    "magnitude": nlr.grad_magnitude_lr,
    "history": nlr.grad_history_lr,
    "sign": nlr.sign_consistency_lr,
}
SCALE_BY = {
    "magnitude": nlr.scale_by_grad_magnitude_lr,
    "history": nlr.scale_by_grad_history_lr,
    "sign": nlr.scale_by_sign_consistency_lr,
}
DEFAULT_HP = {
    "magnitude": {"alpha": 0.01, "min_lr": 1e-6, "max_lr": 1.0},
    "history": {"beta": 0.9, "eps": 1e-8, "min_lr": 1e-6, "max_lr": 1.0},
    "sign": {"beta": 0.9, "sign_beta": 0.9, "eps": 1e-8, "min_lr": 1e-6,
             "max_lr": 1.0},
}

SHAPES = {
    "Dense_0/kernel": (6, 5),
    "Dense_0/bias": (5,),
    "Conv_0/kernel": (3, 3, 2, 4),
    "LayerNorm_0/scale": (5,),
    "temperature": (),
}


def nest(flat: dict) -> dict:
  """``{"a/b": x}`` -> ``{"a": {"b": x}}``."""
  out: dict = {}
  for path, value in flat.items():
    node = out
    *parents, last = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[last] = value
  return out


def flatten(tree) -> dict:
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {"/".join(str(k.key) for k in p): v for p, v in flat}


class Quadratic:
  """``L = sum(a * (p - target)**2) / 2`` plus a fixed noise per step.

  The gradient ``a * (p - target) + noise_k`` is computed from each side's own
  parameters, so both sides follow their own closed-loop trajectory. ``a`` lies
  in [0.2, 1], so even the rate ``max_lr = 1`` is stable.
  """

  def __init__(self, seed: int = 0, steps: int = 40, noise: float = 0.3):
    rng = np.random.default_rng(seed)
    self.a = {k: rng.uniform(0.2, 1.0, s) for k, s in SHAPES.items()}
    self.target = {k: rng.normal(size=s) for k, s in SHAPES.items()}
    self.init = {k: rng.normal(size=s) for k, s in SHAPES.items()}
    self.noise = [
        {k: noise * rng.normal(size=s) for k, s in SHAPES.items()}
        for _ in range(steps)
    ]

  def grad_np(self, params: dict, k: int) -> dict:
    return {
        n: self.a[n] * (params[n] - self.target[n]) + self.noise[k][n]
        for n in params
    }

  def grad_jax(self, params, k: int):
    flat = flatten(params)
    return nest({
        n: jnp.asarray(self.a[n], v.dtype) * (v - jnp.asarray(self.target[n], v.dtype))
        + jnp.asarray(self.noise[k][n], v.dtype)
        for n, v in flat.items()
    })


@pytest.fixture
def quadratic() -> Quadratic:
  return Quadratic()


# Tests over about 10 s on 2 CPU cores (pytest --durations): `pytest -m "not
# slow"` is the fast subset (CONTRIBUTING.md). A whole module by file name, or
# single tests by "file::name" prefix (parametrized ids included). A new slow
# test may carry @pytest.mark.slow itself instead.
SLOW_MODULES = frozenset({
    "test_convergence.py",    # the study's quick run, in a subprocess
    "test_notebooks.py",      # executes every notebook
    "test_multiprocess.py",   # two JAX processes
    "test_quickstart.py",     # README's training loops
    "test_sharding.py",       # 8-device runs in subprocesses
    "test_contract.py",       # every optimizer of tests/registry.py x every contract
    "test_fuzz.py",           # hypothesis over every optimizer
    # Modules of many tests that each compile a model or an optimizer
    # (together they take the fast subset over 3 minutes).
    "test_normuon.py", "test_scanned.py", "test_flax.py", "test_readers_matrix.py",
    "test_optax_muon_cases.py", "test_silent_inputs_3.py", "test_regroup.py",
    "test_properties.py", "test_checkpoint.py", "test_parity_normuon.py",
    "test_parity_adam_mini.py", "test_mu_dtype.py", "test_muon_options.py",
    "test_axis_names.py",
})
SLOW_TESTS = (
    "test_adam_mini.py::test_nnx_transformer_as_is",
    "test_adam_mini.py::test_linen_transformer_as_is",
    "test_adam_mini.py::test_inject_hyperparams_binds_every_hyperparameter",
    "test_adam_mini.py::test_unrecognised_leaves_are_reported_once_per_optimizer",
    "test_adam_mini_blocks.py::test_linen_transformer_by_path_and_shape",
    "test_docs.py::test_mkdocs_build_strict",  # builds the site (the module's fixture)
    "test_examples.py::test_compare_strategies_quick",
    "test_examples.py::test_hypergradient_digits_quick",
    "test_examples.py::test_rnn_time_series_quick",
    "test_examples.py::test_transfer_learning_quick",
    "test_examples.py::test_linen_train_state_quick",
    "test_examples.py::test_char_lm_quick",
    "test_examples.py::test_add_param_group_quick",
    "test_examples.py::test_bad_out_is_a_usage_error_before_training",
    "test_examples.py::test_hypergradient_digits_inf_beta_scale_is_a_usage_error",
)


# The suite's longest modules, longest first (about, on 2 cores): pytest-xdist
# (`--dist loadscope --no-loadscope-reorder`, pyproject.toml) hands each
# module to one worker whole, in this order, so that no worker starts a
# minute-long module while the other runs out of work. The rest follow in
# file order.
LONGEST_FIRST = (
    "test_contract.py", "test_examples.py", "test_notebooks.py", "test_convergence.py",
    "test_multiprocess.py", "test_normuon.py", "test_sharding.py", "test_fuzz.py",
    "test_scanned.py", "test_docs.py", "test_resume.py", "test_checkpoint.py",
)


def pytest_collection_modifyitems(config, items):
  del config
  for item in items:
    name = item.nodeid.rsplit("/", 1)[-1]
    uses_site = "site" in getattr(item, "fixturenames", ())
    if (name.split("::")[0] in SLOW_MODULES or name.startswith(SLOW_TESTS)
        or (name.startswith("test_docs.py::") and uses_site)):
      item.add_marker(pytest.mark.slow)
  # LONGEST_FIRST's modules first, each in one piece.
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0].rsplit("/", 1)[-1],
                                       len(rank)))
