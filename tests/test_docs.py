"""The docs site builds with warnings as errors and documents every public name."""

from __future__ import annotations

import ast
import html
import os
import pathlib
import re
import subprocess
import sys

import pytest
import yaml

import optax_neuronlr as nlr

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "optax_neuronlr"
# reST math, which the google docstring parser leaves as literal text.
REST_MATH = re.compile(r"\.\. math::|:math:")
DISPLAY_MATH = re.compile(r"\$\$(.+?)\$\$", flags=re.S)


def test_every_public_name_is_in_the_api_reference():
  documented = set(re.findall(r"^::: optax_neuronlr\.(\w+)", (ROOT / "docs" / "api.md")
                              .read_text(), flags=re.M))
  missing = sorted(set(nlr.__all__) - documented)
  assert not missing, f"add to docs/api.md: {missing}"
  unknown = sorted(documented - set(nlr.__all__))
  assert not unknown, f"docs/api.md names what the package does not export: {unknown}"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> pathlib.Path:
  """The site, built once for this module as README.md says to build it:
  ``mkdocs build --strict`` (no ``-q``, so that every warning is visible)."""
  out = tmp_path_factory.mktemp("site")
  env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
  result = subprocess.run(
      [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
      cwd=ROOT, capture_output=True, text=True, timeout=300, env=env, check=False)
  log = result.stdout + result.stderr
  assert result.returncode == 0, log[-5000:]
  warnings = [line for line in log.splitlines() if re.match(r"\s*(WARNING|ERROR)\b", line)]
  assert not warnings, "\n".join(warnings)
  return out


def test_readme_builds_the_docs_strictly():
  """The README's docs command is the one this module's fixture runs."""
  readme = (ROOT / "README.md").read_text()
  assert "mkdocs build --strict" in readme


def test_mkdocs_build_strict(site):
  api = (site / "api" / "index.html").read_text()
  assert "Per-unit rates from an EMA of the gradient magnitude" in api


def test_study_figures_are_committed_and_served(site):
  """Every image the README shows is a file in git, and on the built home page."""
  readme = (ROOT / "README.md").read_text()
  images = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", readme)
  assert images
  tracked = subprocess.run(["git", "ls-files", *images], cwd=ROOT, capture_output=True,
                           text=True, check=False).stdout.split()
  if (ROOT / ".git").exists():
    assert sorted(tracked) == sorted(images), sorted(set(images) - set(tracked))
  home = (site / "index.html").read_text()
  for image in images:
    assert f'src="{image}"' in home, image
    assert (site / image).is_file(), image


def test_api_page_documents_public_names_only(site):
  """No dunders or dataclass internals, no memory addresses, no builtin
  docstrings, no raw reST roles; cross-references are links."""
  api = (site / "api" / "index.html").read_text()
  ids = re.findall(r'<h[2-6][^>]*\bid="([^"]+)"', api)
  assert ids
  dunders = sorted(i for i in ids if re.search(r"\.__\w+__$|\._[A-Za-z]", i))
  assert not dunders, dunders
  assert not re.search(r"\b0x[0-9a-f]{6,}", api), "memory address on the API page"
  assert "new empty dictionary" not in api, "builtin dict docstring on the API page"
  text = html.unescape(re.sub(r"<[^>]+>", "", api))
  roles = sorted(set(re.findall(r":(?:func|class|meth|attr|mod|data|obj|exc):`?[\w.~]*", text)))
  assert not roles, roles
  literal_markers = re.findall(r".{0,40}\w::[ \t]*$", text, flags=re.M)
  assert not literal_markers, literal_markers  # reST's "text::"
  # A docstring's :func:`learning_rates_by_state` became a link.
  assert 'href="#optax_neuronlr.learning_rates_by_state"' in api
  # Doctest examples render as code, not as nested block quotes.
  assert "<blockquote>\n<blockquote>" not in api


def test_notebook_pages_load_a_math_renderer(site):
  """mkdocs-jupyter writes ``<script src="">`` unless given a MathJax URL."""
  page = (site / "notebooks" / "05_write_your_own_rule" / "index.html").read_text()
  assert "$$" in page or "\\[" in page  # the notebook has display math
  sources = re.findall(r'<script[^>]*\bsrc="([^"]*)"', page)
  assert "" not in sources, "empty <script src> on a notebook page"
  assert any(re.search(r"mathjax|katex", s, flags=re.I) and re.match(r"https?://", s)
             for s in sources), sources


def _documented_docstrings():
  """(where, docstring) for the docstrings that the API page can render.

  Public functions and classes (and their public methods) of every module, and
  the docstrings of the modules that docs/api.md names; ``parity`` (the PyTorch
  comparison harness) is not in the API reference.
  """
  documented = set(re.findall(r"^::: ([\w.]+)", (ROOT / "docs" / "api.md").read_text(),
                              flags=re.M))
  for path in sorted(PACKAGE.rglob("*.py")):
    rel = path.relative_to(ROOT)
    if "parity" in rel.parts:
      continue
    tree = ast.parse(path.read_text(), filename=str(path))
    module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
    if module in documented and (doc := ast.get_docstring(tree, clean=True)):
      yield f"{rel}", doc
    for node in tree.body:
      if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        continue
      if node.name.startswith("_"):
        continue
      if doc := ast.get_docstring(node, clean=True):
        yield f"{rel}:{node.lineno} {node.name}", doc
      if isinstance(node, ast.ClassDef):
        for member in node.body:
          if (isinstance(member, (ast.FunctionDef, ast.AsyncFunctionDef))
              and not member.name.startswith("_")
              and (doc := ast.get_docstring(member, clean=True))):
            yield f"{rel}:{member.lineno} {node.name}.{member.name}", doc


def _squash(tex: str) -> str:
  return " ".join(tex.split())


def test_docstring_math_renders_as_arithmatex(site):
  """Every ``$$ ... $$`` block of a documented docstring becomes arithmatex
  markup on the API page (what KaTeX renders), with its TeX intact."""
  api = (site / "api" / "index.html").read_text()
  blocks = [(where, _squash(tex)) for where, doc in _documented_docstrings()
            for tex in DISPLAY_MATH.findall(doc)]
  assert api.count('class="arithmatex"') >= len(blocks)
  rendered = {_squash(html.unescape(m)) for m in re.findall(
      r'class="arithmatex">\\\[(.*?)\\\]</', api, flags=re.S)}
  missing = [where for where, tex in blocks if tex not in rendered]
  assert not missing, f"$$ math not rendered as arithmatex: {missing}"
  # No TeX subscript was taken for Markdown emphasis.
  for tex in rendered:
    assert "<em>" not in tex, tex


def test_built_pages_have_no_rest_math(site):
  found = sorted(str(p.relative_to(site)) for p in site.rglob("*.html")
                 if REST_MATH.search(p.read_text()))
  assert not found, f"reST math shows as literal text in: {found}"


def test_extra_javascript_loads_a_math_renderer():
  config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)
  scripts = [s if isinstance(s, str) else s["path"]
             for s in config.get("extra_javascript", [])]
  assert any(re.search(r"katex|mathjax", s, flags=re.I) for s in scripts), scripts
  for script in scripts:
    if not re.match(r"https?://", script):
      assert (ROOT / "docs" / script).is_file(), script


def test_no_rest_math_in_package():
  offenders = [f"{p.relative_to(ROOT)}:{i}"
               for p in sorted(PACKAGE.rglob("*.py"))
               for i, line in enumerate(p.read_text().splitlines(), 1)
               if REST_MATH.search(line)]
  assert not offenders, f"write math as $$ ... $$ / $...$ (docs/api.md): {offenders}"
