"""The README's study tables say what the committed CSVs say.

Every row of the README's v3 tables (char_lm at 800 and 2400 steps) and of its
width table is checked against ``benchmarks/results/summary.csv`` and
``width.csv``: the same methods, the test loss and its spread, the verdict, the
p-value and the chosen rate, to the digits the README prints.
"""

from __future__ import annotations

import csv
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _readme_table(header_start: str) -> list[list[str]]:
  """The rows (cells) of the README table whose header starts ``header_start``."""
  lines = (ROOT / "README.md").read_text().splitlines()
  start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
  rows = []
  for line in lines[start + 2:]:
    if not line.startswith("|"):
      break
    rows.append([c.strip() for c in line.strip("|").split("|")])
  assert rows, header_start
  return rows


def _csv(name: str) -> list[dict[str, str]]:
  with open(RESULTS / name, newline="") as f:
    return list(csv.DictReader(f))


def _number(text: str) -> float:
  return float(re.sub(r"[*,]", "", text).split()[0])


def _close(printed: str, value: float) -> bool:
  """``printed`` is ``value`` to the significant digits it shows."""
  digits = re.sub(r"[^0-9]", "", printed.split("e")[0].lstrip("0.")) or "0"
  shown = _number(printed)
  return abs(shown - value) <= 0.51 * 10 ** (_exponent(shown) - len(digits) + 1)


def _exponent(x: float) -> int:
  import math  # pylint: disable=g-import-not-at-top
  return int(math.floor(math.log10(abs(x)))) if x else 0


@pytest.mark.parametrize("steps", ["800", "2400"])
def test_v3_tables_match_summary_csv(steps):
  rows = _readme_table(f"| method | peak rate | test loss ({steps} steps)")
  summary = {r["method"]: r for r in _csv("summary.csv")
             if r["task"] == "char_lm" and r["steps"] == steps}
  assert {r[0] for r in rows} == set(summary), "README and summary.csv list other methods"
  for method, rate, loss, verdict, p, *_ in rows:
    row = summary[method]
    mean, std = (x.strip("* ") for x in loss.split("±"))
    assert _close(mean, float(row["mean"])), (method, mean, row["mean"])
    assert _close(std, float(row["std"])), (method, std, row["std"])
    assert verdict.strip("* ") == row["verdict"], (method, verdict, row["verdict"])
    if row["p_value"]:
      assert _close(p.split("/")[0].strip(), float(row["p_value"])), (method, p, row["p_value"])
    assert _close(rate.split(",")[0], float(row["rate"])), (method, rate, row["rate"])


def test_width_table_matches_width_csv():
  rows = _readme_table("| method | best rate d=32")
  sweep: dict[str, dict[str, dict[str, str]]] = {}
  for r in _csv("width.csv"):
    sweep.setdefault(r["method"], {})[r["width"]] = r
  assert {r[0] for r in rows} == set(sweep)
  for method, *rates, drift, last in rows:
    by_width = sweep[method]
    for width, rate in zip(("32", "64", "128", "256"), rates):
      assert _close(rate, float(by_width[width]["best_rate"])), (method, width, rate)
    assert _close(drift, float(by_width["256"]["drift_decades"])), (method, drift)
    tuned, small = re.findall(r"\d+\.\d+", last)[:2]
    assert _close(tuned, float(by_width["256"]["best_loss"])), (method, last)
    assert _close(small, float(by_width["256"]["loss_at_small_rate"])), (method, last)


def test_digits_and_gru_table_matches_summary_csv():
  rows = _readme_table("| method | digits: rate")
  summary = {(r["task"], r["method"]): r for r in _csv("summary.csv")
             if r["task"] in ("digits", "rnn")}
  for method, *cells in rows:
    for task, (rate, loss, verdict) in zip(("digits", "rnn"), (cells[:3], cells[3:])):
      row = summary[(task, method)]
      mean, std = (x.strip("* ") for x in loss.split("±"))
      assert _close(rate, float(row["rate"])), (task, method, rate)
      assert _close(mean, float(row["mean"])), (task, method, mean, row["mean"])
      assert _close(std, float(row["std"])), (task, method, std, row["std"])
      assert verdict.split()[0].strip("*") == row["verdict"], (task, method, verdict)
      if row["p_value"]:
        p = re.search(r"\(([^/]+)/", verdict).group(1)
        assert _close(p.strip(), float(row["p_value"])), (task, method, p, row["p_value"])
  assert {m for m, *_ in rows} == {m for t, m in summary}
