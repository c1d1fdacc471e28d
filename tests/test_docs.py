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


def test_notebook_pages_load_the_sites_katex_only(site):
  """One renderer: the notebook pages draw their math with the site's KaTeX,
  and mkdocs-jupyter's MathJax loader is gone (no empty ``<script src="">``)."""
  page = (site / "notebooks" / "05_write_your_own_rule" / "index.html").read_text()
  assert "$$" in page or "\\[" in page  # the notebook has display math
  sources = re.findall(r'<script[^>]*\bsrc="([^"]*)"', page)
  assert "" not in sources, "empty <script src> on a notebook page"
  assert any(s.endswith("vendor/katex/katex.min.js") for s in sources), sources
  assert not re.search(r"mathjax", page, flags=re.I), "a MathJax loader on a notebook page"


def test_built_site_loads_nothing_from_other_sites(site):
  """Offline (or behind a proxy) every page works: no script, stylesheet,
  font or preconnect from another site, and the KaTeX files are in the site."""
  remote = re.compile(r'<(?:script|link|img)\b[^>]*\b(?:src|href)="(?:https?:)?//[^"]*"')
  found = {str(p.relative_to(site)): remote.findall(p.read_text())
           for p in site.rglob("*.html")}
  found = {k: v for k, v in found.items() if v}
  assert not found, found
  for css in site.rglob("*.css"):
    assert not re.search(r"url\((?:['\"])?(?:https?:)?//", css.read_text()), css
  vendor = site / "vendor" / "katex"
  for name in ("katex.min.js", "katex.min.css", "contrib/auto-render.min.js"):
    assert (vendor / name).is_file(), name
  # Every font the stylesheet names first (woff2, what browsers load) is there.
  fonts = re.findall(r"url\((fonts/[^)]+\.woff2)\)", (vendor / "katex.min.css").read_text())
  assert fonts and all((vendor / f).is_file() for f in fonts), fonts


def test_api_returns_one_row_per_value(site):
  """A "Returns:" section describes one value, however many lines it takes:
  never one table row per source line."""
  api = (site / "api" / "index.html").read_text()
  sections = re.findall(r'doc-section-title">Returns:</span>(.*?)</table>', api, flags=re.S)
  assert len(sections) > 20
  rows = [len(re.findall(r"<tr\b", s[s.index("<tbody"):])) for s in sections]
  split = [i for i, n in enumerate(rows) if n != 1]
  assert not split, [re.sub(r"<[^>]+>", " ", sections[i])[:200] for i in split]


# reST that Markdown shows as it is: a directive or a literal-block marker.
REST_DIRECTIVE = re.compile(r"^\s*\.\. [\w-]+::", flags=re.M)
REST_LITERAL_MARKER = re.compile(r"\S::[ \t]*$", flags=re.M)


def _public_docstrings():
  """(name, docstring) of every public name, its public methods and a
  transform that ``rule_transform`` builds, as ``help()`` shows them."""
  import inspect  # pylint: disable=g-import-not-at-top
  objects = {name: getattr(nlr, name) for name in nlr.__all__}
  objects["rule_transform(GradHistory)"] = nlr.rule_transform(nlr.GradHistory)
  objects["rule_transform(GradHistory, alias=True)"] = nlr.rule_transform(
      nlr.GradHistory, alias=True)
  for name, obj in objects.items():
    if doc := inspect.getdoc(obj) if callable(obj) or inspect.ismodule(obj) else None:
      yield name, doc
    if inspect.isclass(obj):
      for attr, member in vars(obj).items():
        if not attr.startswith("_") and callable(member) and (doc := inspect.getdoc(member)):
          yield f"{name}.{attr}", doc


def test_docstrings_have_no_rest_blocks():
  """help() shows Markdown: no reST directive (``.. code-block::``) and no
  ``text::`` literal marker in any public docstring."""
  bad = sorted(name for name, doc in _public_docstrings()
               if REST_DIRECTIVE.search(doc) or REST_LITERAL_MARKER.search(doc))
  assert not bad, bad


REST_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|attr|data|mod|obj|exc|const):`")


def test_docstrings_have_no_rest_roles():
  """help() shows Markdown code (`learning_rates`), not Sphinx roles
  (``:func:`learning_rates```), in every public docstring and every source
  file of the package."""
  bad = sorted(name for name, doc in _public_docstrings() if REST_ROLE.search(doc))
  assert not bad, bad
  files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "optax_neuronlr").rglob("*.py")
                 if REST_ROLE.search(p.read_text()))
  assert not files, files


def test_generated_docstrings_are_markdown():
  """What rule_transform and a rule's state class write: Markdown code
  (single backticks), no reST roles or double backticks."""
  docs = [nlr.rule_transform(nlr.GradHistory).__doc__,
          nlr.rule_transform(nlr.GradHistory, alias=True).__doc__,
          nlr.GradHistory().state_class().__doc__]
  for doc in docs:
    head = doc.split("\n\n")[:2]  # the generated part, before the rule's own docstring
    for part in head:
      assert not re.search(r":(?:func|class|meth):`|``", part), part
  assert "`optax_neuronlr.scale_by_rule`" in docs[0]


def test_api_page_has_no_rest_directives(site):
  text = html.unescape(re.sub(r"<[^>]+>", "", (site / "api" / "index.html").read_text()))
  assert not REST_DIRECTIVE.search(text), REST_DIRECTIVE.search(text)


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


def test_extra_javascript_loads_one_math_renderer_from_the_site():
  config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)
  scripts = [s if isinstance(s, str) else s["path"]
             for s in config.get("extra_javascript", [])]
  styles = config.get("extra_css", [])
  assert any(re.search(r"katex", s, flags=re.I) for s in scripts), scripts
  assert not any(re.search(r"mathjax", s, flags=re.I) for s in scripts), scripts
  for path in [*scripts, *styles]:
    assert not re.match(r"(https?:)?//", path), path  # served by the site itself
    assert (ROOT / "docs" / path).is_file(), path


def test_no_rest_math_in_package():
  offenders = [f"{p.relative_to(ROOT)}:{i}"
               for p in sorted(PACKAGE.rglob("*.py"))
               for i, line in enumerate(p.read_text().splitlines(), 1)
               if REST_MATH.search(line)]
  assert not offenders, f"write math as $$ ... $$ / $...$ (docs/api.md): {offenders}"
