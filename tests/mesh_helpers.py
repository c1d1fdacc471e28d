"""Scaffolding shared by the scripts that run on several CPU devices or processes
(``sharded_run.py``, ``explicit_sharding_run.py``, ``multiprocess_run.py``) and
the tests that launch them.

The scripts run in their own processes, so that the device count set in
``XLA_FLAGS`` takes effect before JAX starts: call
:func:`force_host_devices` before importing jax. They import this module as
``mesh_helpers`` (their own folder is first on ``sys.path``); the tests import
it as ``tests.mesh_helpers``.
"""

from __future__ import annotations

import os
import pathlib
import re
import socket
import subprocess
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent

# One collective of the compiled HLO: its result shape(s) and its kind.
COLLECTIVE = re.compile(
    r"=\s*(\(?[^=]*?\)?)\s+(all-reduce|all-gather|reduce-scatter|"
    r"collective-permute|all-to-all)(?:-start)?\(")
DTYPE_BYTES = {"f64": 8, "f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "s64": 8,
               "u64": 8, "pred": 1, "s8": 1, "u8": 1, "c64": 8, "c128": 16}


def force_host_devices(count: int) -> None:
  """Makes the CPU platform show ``count`` devices (before jax is imported)."""
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  os.environ["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={count}"])


def collectives(hlo: str) -> list[tuple[str, int]]:
  """``(kind, elements)`` of every collective in a compiled HLO text, with the
  element count of its largest result (per device)."""
  return [(op, max(sizes, default=1)) for op, sizes, _ in _parse(hlo)]


def collective_bytes(hlo: str) -> list[tuple[str, int]]:
  """``(kind, bytes)`` of every collective: the bytes of all its results on one
  device (an all-gather's result is the gathered array; an all-reduce's, the
  reduced one)."""
  return [(op, total) for op, _, total in _parse(hlo)]


def _parse(hlo: str) -> list[tuple[str, list[int], int]]:
  out = []
  for shape_text, op in COLLECTIVE.findall(hlo):
    sizes, total = [], 0
    for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", shape_text):
      n = 1
      for d in dims.split(","):
        if d:
          n *= int(d)
      sizes.append(n)
      total += n * DTYPE_BYTES.get(dtype, 4)
    out.append((op, sizes, total))
  return out


def free_port() -> int:
  """A TCP port that is free on localhost now."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def script_env(**extra: str) -> dict[str, str]:
  """The environment for a script: this checkout's package first on the path
  (also where another copy is installed), plus ``extra``."""
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(
      [str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
  env.update(extra)
  return env


def run_script(script: pathlib.Path, *args: str, timeout: float = 600
               ) -> subprocess.CompletedProcess:
  """Runs ``python script args`` with :func:`script_env`; output captured."""
  return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                        timeout=timeout, check=False, env=script_env())
