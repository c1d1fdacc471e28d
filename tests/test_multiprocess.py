"""Two processes x 4 CPU devices with JAX's multi-process runtime (gloo on
localhost): sharded training equals one device, an orbax checkpoint written by
both processes resumes bit for bit, and ``add_param_group`` works on the
multi-process state. The run itself is tests/multiprocess_run.py."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from tests import mesh_helpers

SCRIPT = pathlib.Path(__file__).with_name("multiprocess_run.py")
PROCESSES = 2
TIMEOUT = 420  # seconds for the whole run; about 90 s on 2 busy cores
OPTIMIZERS = ("adam_mini", "normuon", "muon", "sign_adam", "groups")


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> list[dict]:
  workdir = tmp_path_factory.mktemp("multiprocess")
  port = str(mesh_helpers.free_port())
  logs = [open(workdir / f"log_{i}.txt", "w+") for i in range(PROCESSES)]  # pylint: disable=consider-using-with
  procs = [subprocess.Popen(  # pylint: disable=consider-using-with
      [sys.executable, str(SCRIPT), str(i), str(PROCESSES), port, str(workdir)],
      stdout=logs[i], stderr=subprocess.STDOUT, env=mesh_helpers.script_env())
      for i in range(PROCESSES)]
  try:
    codes = [p.wait(timeout=TIMEOUT) for p in procs]
  except subprocess.TimeoutExpired:
    codes = None
  finally:
    for p in procs:  # a process whose peer died waits in a collective: end it
      if p.poll() is None:
        p.kill()
        p.wait()
  tails = []
  for log in logs:
    log.seek(0)
    tails.append(log.read()[-3000:])
    log.close()
  assert codes is not None, f"timed out after {TIMEOUT} s:\n" + "\n".join(tails)
  assert codes == [0] * PROCESSES, "\n".join(tails)
  out = [json.loads((workdir / f"result_{i}.json").read_text()) for i in range(PROCESSES)]
  for i, r in enumerate(out):
    r["params"] = dict(np.load(workdir / f"params_{i}.npz"))
  return out


def test_both_processes_ran_on_the_global_mesh(results):
  for i, r in enumerate(results):
    assert r["process_id"] == i
    assert (r["process_count"], r["device_count"], r["local_devices"]) == (2, 8, 4)


def test_equal_to_one_device(results):
  """Every optimizer's parameters after 6 steps on the (fsdp=2, model=4) mesh
  of two processes equal one device's to float32 rounding (shards sum in
  another order; Adam's direction divides by the root of small second
  moments, which amplifies it)."""
  r = results[0]
  assert sorted(r["max_diff"]) == sorted(OPTIMIZERS)
  for name in OPTIMIZERS:
    assert r["total_change"][name] > 1e-2, name
    assert r["max_diff"][name] <= 1e-4 * r["total_change"][name], (name, r["max_diff"])


def test_processes_agree(results):
  """Both processes gather the same global parameters, bit for bit."""
  a, b = results[0]["params"], results[1]["params"]
  assert sorted(a) == sorted(b) and len(a) == len(OPTIMIZERS) * 10
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_checkpoint_restores_and_resumes_bit_for_bit(results):
  for r in results:
    assert r["restored_equal"], r
    assert r["resumed_params_equal"], r
    assert r["resumed_states_equal"], r


def test_add_param_group_on_the_multiprocess_state(results):
  for r in results:
    assert r["head_in_groups"] == ["body", "head", "mlp"]
