"""One version, from one place: the package metadata and ``nlr.__version__``
agree, and CHANGELOG.md describes it."""

from __future__ import annotations

import importlib.metadata
import json
import pathlib
import re

import pytest

import optax_neuronlr as nlr

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_pyproject_reads_the_version_from_the_package():
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())
  assert "version" not in project["project"], "the version lives in __init__.py only"
  assert "version" in project["project"]["dynamic"]
  attr = project["tool"]["setuptools"]["dynamic"]["version"]["attr"]
  assert attr == "optax_neuronlr.__version__"


def test_built_metadata_has_the_package_version(tmp_path):
  """The metadata that pip would install from this tree (``pip show``)."""
  build_meta = pytest.importorskip("setuptools.build_meta")
  import os
  cwd = os.getcwd()
  os.chdir(ROOT)
  try:
    name = build_meta.prepare_metadata_for_build_wheel(str(tmp_path))
  finally:
    os.chdir(cwd)
  metadata = (tmp_path / name / "METADATA").read_text()
  version = re.search(r"^Version: (\S+)$", metadata, flags=re.M).group(1)
  assert version == nlr.__version__


def test_installed_metadata_agrees_when_installed_from_this_tree():
  try:
    dist = importlib.metadata.distribution("optax_neuronlr")
  except importlib.metadata.PackageNotFoundError:
    pytest.skip("optax_neuronlr is not installed")
  direct_url = dist.read_text("direct_url.json")
  url = json.loads(direct_url).get("url", "") if direct_url else ""
  if url.removeprefix("file://") != str(ROOT):
    pytest.skip(f"the installed optax_neuronlr comes from {url or 'an index'}, not {ROOT}")
  assert dist.version == nlr.__version__


def test_changelog_has_every_release_and_the_current_version():
  changelog = (ROOT / "CHANGELOG.md").read_text()
  headings = re.findall(r"^## (\d+\.\d+)\b(.*)$", changelog, flags=re.M)
  versions = [v for v, _ in headings]
  assert versions[:4] == ["0.4", "0.3", "0.2", "0.1"], versions
  major_minor = ".".join(nlr.__version__.split(".")[:2])
  assert versions[0] == major_minor
  if re.search(r"dev|a|b|rc", nlr.__version__):
    assert "unreleased" in headings[0][1]
    assert nlr.__version__ in headings[0][1]


def test_pytest_quiet_still_prints_the_pass_count():
  """``addopts = "-q"`` plus ``pytest -q`` is ``-qq``, which drops the count."""
  options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
  addopts = options.get("addopts", "")
  addopts = " ".join(addopts) if isinstance(addopts, list) else addopts
  assert not re.search(r"(^|\s)-q+\b|--quiet", addopts), addopts
