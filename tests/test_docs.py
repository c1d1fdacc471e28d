"""The docs site builds with warnings as errors and documents every public name."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import optax_neuronlr as nlr

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_public_name_is_in_the_api_reference():
  documented = set(re.findall(r"^::: optax_neuronlr\.(\w+)", (ROOT / "docs" / "api.md")
                              .read_text(), flags=re.M))
  missing = sorted(set(nlr.__all__) - documented)
  assert not missing, f"add to docs/api.md: {missing}"
  unknown = sorted(documented - set(nlr.__all__))
  assert not unknown, f"docs/api.md names what the package does not export: {unknown}"


def test_mkdocs_build_strict(tmp_path):
  env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
  result = subprocess.run(
      [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path)],
      cwd=ROOT, capture_output=True, text=True, timeout=300, env=env, check=False)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  api = (tmp_path / "api" / "index.html").read_text()
  assert "Per-unit rates from an EMA of the gradient magnitude" in api
