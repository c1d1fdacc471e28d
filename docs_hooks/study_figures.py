"""MkDocs hook: serve the study's figures where the README links them.

The home page is README.md (included with pymdownx.snippets), which shows the
study's figures from ``benchmarks/results/*.png``, a path relative to the
repository root. This hook adds those committed files to the site under the
same path, so the links work on GitHub and on the docs site alike, without a
second copy of the images in ``docs/``.
"""

from __future__ import annotations

import pathlib

from mkdocs.structure.files import File

RESULTS = "benchmarks/results"


def on_files(files, config):
  root = pathlib.Path(config["config_file_path"]).resolve().parent
  for png in sorted((root / RESULTS).glob("*.png")):
    files.append(File.generated(config, f"{RESULTS}/{png.name}", abs_src_path=str(png)))
  return files
