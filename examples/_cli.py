"""Command-line pieces the examples share.

Each example stays a script of its own; what every one of them needs from its
command line lives here, so that a bad argument fails before training starts.
"""

from __future__ import annotations

import argparse
import os

FIGURE_FORMATS = (".png", ".pdf", ".svg")
# Where the examples write their figures by default: an ignored folder of the
# working directory (created when needed), never the repository's root.
RESULTS_DIR = "results"


def default_figure(name: str) -> str:
  """``results/<name>``, the default ``--out`` of an example."""
  return os.path.join(RESULTS_DIR, name)


def figure_path(text: str) -> str:
  """An ``argparse`` type for ``--out``: a figure file whose folder exists.

  Checked when the arguments are parsed, so that a typo in the folder ends the
  run at once instead of in a traceback after training.
  """
  if os.path.isdir(text):
    raise argparse.ArgumentTypeError(f"{text!r} is a directory; give a file name")
  folder = os.path.dirname(os.path.abspath(text))
  if os.path.normpath(os.path.dirname(text)) == RESULTS_DIR:
    os.makedirs(folder, exist_ok=True)  # the default folder (ignored by git)
  if not os.path.isdir(folder):
    raise argparse.ArgumentTypeError(f"the folder of {text!r} does not exist")
  if not os.access(folder, os.W_OK):
    raise argparse.ArgumentTypeError(f"the folder of {text!r} is not writable")
  ext = os.path.splitext(text)[1].lower()
  if ext not in FIGURE_FORMATS:
    raise argparse.ArgumentTypeError(
        f"cannot write {ext or 'extension-less'!r} files (use {', '.join(FIGURE_FORMATS)})")
  return text
