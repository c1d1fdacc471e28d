"""Griffe extension: the package's Markdown docstrings get cross-references.

The package's docstrings are Markdown: they name other objects as inline code
(`learning_rates`, `nlr.muon`), which ``help()`` shows as it is. On the API
page this extension makes each such name that is a public object of the
package a cross-reference (``[`learning_rates`][optax_neuronlr.learning_rates]``);
a Sphinx role (``:func:`learning_rates```), which mkdocstrings' Google parser
would leave as literal text, becomes the same reference or inline code. It
also reads an ``Example:`` section as ``Examples:``, so that doctest lines
render as code, not as nested block quotes, turns reST's ``text::`` before a
literal block into ``text:``, and drops the docstring that
inspection lends an attribute from its value's builtin type (``int``'s for a
default of ``-1``).

Loaded by mkdocs.yml (mkdocstrings ``extensions``); the source files are not
changed.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

import griffe

PACKAGE = "optax_neuronlr"
ROLE = re.compile(r":(?:py:)?(func|class|meth|attr|data|mod|obj|exc|const):`(~?)([^`]+)`")
EXAMPLE_HEADER = re.compile(r"^(\s*)Example:\s*$", flags=re.M)
# reST's "text::" before an indented literal block; Markdown shows the block
# as code already, and the "::" literally.
LITERAL_MARKER = re.compile(r"(\S)::[ \t]*$", flags=re.M)


def _public_target(name: str, context: str) -> str | None:
  """The public identifier that ``name`` (seen in ``context``) refers to."""
  pkg = importlib.import_module(PACKAGE)
  public = set(getattr(pkg, "__all__", ()))
  for prefix in (f"{PACKAGE}.", "nlr."):
    name = name.removeprefix(prefix)
  candidates = [name]
  # A method or attribute named alone, inside a class's docstrings.
  parts = context.split(".")
  if len(parts) >= 2 and parts[0] == PACKAGE:
    for k in range(len(parts), 1, -1):
      candidates.append(".".join(parts[1:k] + [name]))
  for candidate in candidates:
    head, *rest = candidate.split(".")
    if head not in public or any(p.startswith("_") for p in rest):
      continue
    obj: Any = pkg
    try:
      for p in [head, *rest]:
        obj = getattr(obj, p)
    except AttributeError:
      continue
    # Members link to their class (or module): it is always on the page,
    # a member only when it has a docstring.
    return f"{PACKAGE}.{head}"
  return None


def markdown_roles(text: str, context: str) -> str:
  """``text`` with every reST role replaced by a Markdown reference or code."""

  def replace(m: re.Match[str]) -> str:
    _, tilde, name = m.groups()
    shown = name.rsplit(".", 1)[-1] if tilde else name.removeprefix(f"{PACKAGE}.")
    target = _public_target(name, context)
    return f"[`{shown}`][{target}]" if target else f"`{shown}`"

  return ROLE.sub(replace, text)


# Inline code (single backticks, not already a link's text) outside fenced
# blocks: `learning_rates`, `nlr.muon`, `scale_by_rule()`.
INLINE_CODE = re.compile(r"(?<![`\[])`([^`\n]+)`(?![`\]])")
FENCE = re.compile(r"(^[ \t]*```)", flags=re.M)
NAME = re.compile(r"^[A-Za-z_][\w.]*$")


def link_public_names(text: str) -> str:
  """``text`` with every inline-code public name of the package made a link.

  The docstrings write names as Markdown code (`learning_rates`,
  `nlr.muon`), which ``help()`` shows as they are; on the API page a name
  that is a public object of the package becomes a cross-reference. Fenced
  code blocks are left alone.
  """

  def replace(m: re.Match[str]) -> str:
    name = m.group(1).strip().removesuffix("()")
    for prefix in (f"{PACKAGE}.", "nlr."):
      name = name.removeprefix(prefix)
    if not NAME.match(name):
      return m.group(0)
    target = _public_target(name, "")
    return f"[{m.group(0)}][{target}]" if target else m.group(0)

  # FENCE captures each fence line's start: the parts are text, fence, text,
  # fence, ...; text after an odd number of fences lies inside a block.
  parts = FENCE.split(text)
  out, inside = [], False
  for i, part in enumerate(parts):
    if i % 2:
      inside = not inside
      out.append(part)
    else:
      out.append(part if inside else INLINE_CODE.sub(replace, part))
  return "".join(out)


class MarkdownDocstrings(griffe.Extension):
  """Rewrites reST roles and ``Example:`` headers of every docstring."""

  def on_instance(self, *, node: Any, obj: griffe.Object, **kwargs: Any) -> None:
    del kwargs
    value = getattr(node, "obj", None)
    type_doc = getattr(type(value), "__doc__", None)
    if (obj.is_attribute and obj.docstring is not None
        and type(value).__module__ == "builtins" and isinstance(type_doc, str)
        and obj.docstring.value.strip() == type_doc.strip()):
      # Inspection reads an attribute's docstring from its value: a default
      # of -1 would show int's docstring.
      obj.docstring = None
    if obj.docstring is None:
      return
    text = link_public_names(markdown_roles(obj.docstring.value, obj.path))
    text = EXAMPLE_HEADER.sub(r"\1Examples:", text)
    text = LITERAL_MARKER.sub(r"\1:", text)
    obj.docstring.value = text
