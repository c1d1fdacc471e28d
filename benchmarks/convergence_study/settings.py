"""The study's settings: its budget, protocol constants, file locations and names.

Every number the protocol fixes (grid size, refinement, seeds, evaluations, the
schedule's end, the rate ranges, the verdict's threshold) and every name shared
by more than one module lives here, once; the other modules import it.
"""

from __future__ import annotations

import pathlib
from typing import Union

ROOT = pathlib.Path(__file__).resolve().parents[2]  # the repository
RESULTS = ROOT / "benchmarks" / "results"  # the committed full study (the default --out)
QUICK_RESULTS = RESULTS / "quick"  # --quick's default --out (git-ignored)
USER_RESULTS = RESULTS / "user"  # --method-from's default --out (git-ignored)

VERSION = 3  # of convergence.json; another version in --out is replaced, not merged
GRID_POINTS = 7  # half a decade apart: three decades
REFINE = (10**-0.25, 10**0.25)  # the grid's best rate times these: quarter-decade neighbours
SEEDS = 7  # = GRID_POINTS: the grid's compiled run serves the seeds too
EVALS = 20  # validation evaluations per run
TIMING_STEPS = 20
TIMING_REPEATS = 5
QUICK_GRID_POINTS = 2  # the two central points of the grid
QUICK_SEEDS = 2  # = QUICK_GRID_POINTS = len(REFINE): one compiled program
QUICK_EVALS = 4
LONG_SEEDS = 7  # seeds of the long-run variant (char_lm_x3)
LONG_METHODS = ("nadamw", "adamw", "muon", "normuon")
EXTEND = 2  # at most this many extensions of a grid whose best rate sits on its edge
RATIOS = (0.3, 1.0, 3.0)  # AdamW leaves' rate / Muon's, tuned jointly ("adam_ratio" rows)
CONSISTENT_RMS = 0.2  # Moonlight's consistent-RMS factor
NERO_DEFAULT = 0.01  # Nero's default rate (run untuned, as its claim is)
WEIGHT_DECAY = 1e-4  # optax.adamw's default; AdamW, Adam-mini, SCALE, Muon alike
ADAM_HD_HYPER_LR = 1e-7  # Baydin et al. (2018)'s value
DIRECTION_CAP = 10.0  # x adam / x muon variants: max_lr = this x the peak rate
FINAL_FRACTION = 0.1  # of the peak, at the end of the cosine decay
SCHEDULES = ("warmup_cosine", "constant")
REFERENCE = "nadamw"  # the target: the scheduled NAdamW (AlgoPerf's baseline)
CSV_COLUMNS = ("task", "steps", "method", "schedule", "rate", "mean", "std", "seeds",
               "bytes_per_param", "steps_to_target", "verdict", "p_value")

# The width sweep: char_lm at several widths d (heads = d / 8, MLP 4d; depth, steps,
# batch and data fixed), each method tuned per width on the same grid.
WIDTHS = (32, 64, 128, 256)
WIDTH_HEAD_DIM = 8
WIDTH_STEPS = 100
WIDTH_BATCH = 4  # sequences of 32 characters per step (the study's char_lm: 16)
WIDTH_LAYERS = 1  # (the study's char_lm: 2); sized so that d = 256 fits 2 shared CPU cores
WIDTH_SEEDS = 1  # the grid's own seed: one run per rate and width
WIDTH_METHODS = ("nadamw", "muon", "normuon", "adam_mini", "scale_sgd", "adamw", "nero",
                 "lamb[neuron]", "grad_history_lr[neuron] x muon")  # in the order run
WIDTH_COLUMNS = ("task", "width", "method", "best_rate", "best_loss", "loss_at_small_rate",
                 "drift_decades")

# Where each kind of method's grid lies: (lowest, highest) peak rate.
RATE_RANGES = {
    "plain": (10**-2.5, 10**0.5),  # grad_magnitude_lr on the gradient (rates up to max_lr=1)
    "sgd": (1e-3, 1.0),    # SGD with momentum 0.9, Adafactor (relative steps), Muon, NorMuon
    "adam": (1e-4, 1e-1),  # Adam-like steps: AdamW, Adam-HD, Adam-mini, SCALE, EMA rules
    "low": (1e-5, 1e-2),   # rules on Adam's direction, whose rates reach 10x the peak
    "muon_rule": (1e-4, 1e-1),  # rules on Muon's direction, whose rates reach 10x the peak
}

RateSpec = Union[str, tuple[float, float]]  # a RATE_RANGES kind, or (lowest, highest)

# The verdict against the reference: Welch's t-test of the seeds' log test losses (its
# own Welch-Satterthwaite degrees of freedom), Holm's correction over a task's verdicts.
ALPHA = 0.05  # family-wise error rate of a task's verdicts

# Method families (table and figure order) and the reference-000 rules and variants.
BASELINE = "baselines"
RELATIVE = "relative rates (weight norms)"
MUON = "Muon family"
LEARNED = "per-unit and learned rates"
USER = "user methods"
FAMILIES = (BASELINE, MUON, LEARNED, RELATIVE, "reference 000, element",
            "reference 000, neuron", USER)
SEED000_RULES = ("grad_magnitude_lr", "grad_history_lr", "sign_consistency_lr")
VARIANTS = ("ref", "x adam", "x muon")
