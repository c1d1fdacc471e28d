"""MkDocs hook: the site draws its math with the KaTeX it ships, offline.

Docstrings and pages write math that ``pymdownx.arithmatex`` wraps, and the
notebooks' Markdown cells keep their ``$...$`` / ``$$...$$``; both are drawn by
one renderer, KaTeX, from ``docs/vendor/katex/`` (``katex.min.js``,
``contrib/auto-render.min.js``, ``katex.min.css`` and the ``woff2`` fonts, as
published on the npm registry; ``docs/javascripts/katex.js`` calls it). No page
loads anything from another site, so the built site works without a network.

mkdocs-jupyter writes a MathJax loader (a ``<script>`` and its configuration)
into every notebook page; this hook removes it, so that a notebook page loads
no second renderer and requests nothing from a CDN.

To move to another KaTeX release (``KATEX_VERSION`` below)::

    npm pack katex@<version> && tar xzf katex-<version>.tgz
    cp package/dist/katex.min.js package/dist/katex.min.css docs/vendor/katex/
    cp package/dist/contrib/auto-render.min.js docs/vendor/katex/contrib/
    cp package/dist/fonts/*.woff2 docs/vendor/katex/fonts/
    cp package/LICENSE docs/vendor/katex/LICENSE
"""

from __future__ import annotations

import re

KATEX_VERSION = "0.19.1"
VENDOR = "vendor/katex"
# nbconvert's MathJax block (its base/mathjax.html.j2 template), loader and
# configuration, between the two comments it writes around them.
MATHJAX_BLOCK = re.compile(
    r"<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->", flags=re.S)


def on_post_page(output: str, page, config) -> str:
  del page, config
  return MATHJAX_BLOCK.sub("", output)
