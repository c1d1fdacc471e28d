"""Loss cost of a bfloat16 first moment (``mu_dtype``) on the character LM.

The study's char_lm protocol (``benchmarks/convergence.py``: the transformer of
``examples/char_lm.py`` at the study's size, 800 steps, linear warm-up over
10% of the steps and cosine decay to 10% of the peak, weight decay 0.1, the
study's best peak rate of each method), for Adam-mini and NorMuon with a
float32 and a bfloat16 first moment, on a few seeds; prints the final
validation losses and the paired differences. Float32 params throughout.

    python benchmarks/bf16_moments.py --seeds 3 --steps 800
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "examples"))
import char_lm  # noqa: E402  pylint: disable=wrong-import-position

import optax_neuronlr as nlr  # noqa: E402  pylint: disable=wrong-import-position

# The v2 study's best peak rates on char_lm (benchmarks/results/v2/summary.csv).
PEAK = {"adam_mini": 0.0178, "normuon": 0.0178}
ADAMW_PEAK = 0.01  # NorMuon's AdamW leaves: the scheduled AdamW's best rate
SIZES = dict(d_model=32, heads=4, layers=2, seq_len=32, batch=16, eval_batches=8)


def make(method: str, mu_dtype, c):
  lr = char_lm.schedule(PEAK[method], c)
  if method == "adam_mini":
    return nlr.adam_mini(lr, weight_decay=char_lm.WEIGHT_DECAY, mu_dtype=mu_dtype)
  return nlr.normuon(lr, weight_decay=char_lm.WEIGHT_DECAY, mu_dtype=mu_dtype,
                     adam_learning_rate=char_lm.schedule(ADAMW_PEAK, c),
                     adam_weight_decay=char_lm.WEIGHT_DECAY)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--seeds", type=int, default=3)
  p.add_argument("--steps", type=int, default=800)
  p.add_argument("--out", default=None, help="JSON file for the results")
  args = p.parse_args()
  corpus = char_lm.load_corpus()
  rows = []
  for seed in range(args.seeds):
    c = dataclasses.replace(char_lm.Config(), **SIZES, steps=args.steps,
                            warmup=max(1, args.steps // 10), eval_every=args.steps, seed=seed)
    batches = char_lm.make_batches(corpus.train, c.steps, c.batch, c.seq_len, c.seed)
    val = char_lm.make_batches(corpus.val, c.eval_batches, c.batch, c.seq_len, 1)
    for method in PEAK:
      for mu_dtype in (None, "bfloat16"):
        original = char_lm.optimizer
        char_lm.optimizer = lambda *a, m=method, d=mu_dtype, cc=c, **k: make(m, d, cc)
        try:
          run = char_lm.train_run(method, PEAK[method], c, corpus, batches, val)
        finally:
          char_lm.optimizer = original
        row = {"seed": seed, "method": method, "mu_dtype": mu_dtype or "float32",
               "val_loss": run.final_val, "state_bytes": run.state_bytes,
               "step_ms": run.step_ms}
        rows.append(row)
        print(json.dumps(row), flush=True)
  print("\nmethod     mu_dtype  val loss (mean +- std over seeds)  state bytes")
  for method in PEAK:
    for dt in ("float32", "bfloat16"):
      v = [r["val_loss"] for r in rows if r["method"] == method and r["mu_dtype"] == dt]
      b = [r["state_bytes"] for r in rows if r["method"] == method and r["mu_dtype"] == dt][0]
      print(f"{method:10} {dt:9} {np.mean(v):.4f} +- {np.std(v):.4f}  {b:,}")
    diff = [b["val_loss"] - a["val_loss"] for a, b in zip(
        [r for r in rows if r["method"] == method and r["mu_dtype"] == "float32"],
        [r for r in rows if r["method"] == method and r["mu_dtype"] == "bfloat16"])]
    print(f"{method:10} bf16 - f32, paired by seed: {np.mean(diff):+.4f} +- {np.std(diff):.4f} "
          f"({sum(d > 0 for d in diff)}/{len(diff)} seeds worse)")
  if args.out:
    pathlib.Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
  main()
