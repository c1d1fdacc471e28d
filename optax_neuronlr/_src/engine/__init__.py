r"""The per-unit learning-rate engine: `Rule` and `scale_by_rule`.

Every per-unit strategy of the package, and any user's, is a `Rule`: a
frozen dataclass that says which statistics it keeps and how a rate follows
from them. `scale_by_rule` runs it and owns everything else, the same way
for every rule:

* units per leaf (element, neurons, blocks, tensor) or one for the whole tree
  (``"global"``), see `optax_neuronlr._src.units`;
* clamps: the applied rate is ``clip(rate, min_lr, max_lr)``;
* schedules: ``learning_rate`` may be a number or an optax schedule of the step
  count, evaluated at the count before the update (as ``optax.scale_by_schedule``);
* dtypes: statistics in ``state_dtype`` (float32 for bf16/f16 leaves by
  default, else the leaf's dtype); sums are accumulated in at least float32;
  updates keep the incoming dtype. Complex leaves get real per-unit
  statistics (the real part of each observed quantity: $|g|$ is the modulus,
  the sign rule keeps $\mathrm{Re}(g/|g|)$) and complex element statistics;
* ``direction``: an optional optax transform whose output the rate scales;
* inspection (`learning_rates`), sharding, checkpoints and
  ``optax.inject_hyperparams``.

For a leaf with gradient $g$, direction $d$ ($d = g$ by default), element
statistics $e$, unit statistics $s$ and unit reduction $U$ (mean or sum over
each unit's elements), one step $t$ is

$$
o_t = U(\mathrm{observe}(g_t, d_t, e_{t-1})), \quad
s_t = \mathrm{update}(s_{t-1}, o_t), \quad
e_t = \mathrm{update\_elements}(e_{t-1}, g_t, d_t),
$$

$$
l_t = \mathrm{update\_leaf}(l_{t-1}, s_t, o_t), \qquad
r_t = \mathrm{clip}(\mathrm{rate}(s_t, l_t), \mathrm{min\_lr}, \mathrm{max\_lr}),
\qquad u_t = r_t \, d_t ,
$$

where $l$ are the rule's per-leaf statistics (none for most rules).

The sign convention of the package: every ``scale_by_*`` transform returns
``+rate * d``; every alias chains ``optax.scale(-1.0)``.

Beside this package: the state classes (one NamedTuple per rule) and the
readers that recognise them live in `optax_neuronlr._src.rule_state`;
the layouts that ``init`` reports to `state_shardings`
go through `optax_neuronlr._src.layout_channel`; what is checked of a
rule and of what it returns, in `optax_neuronlr._src.rule_checks`.

Where each part lives: the `Rule` base class, `LeafContext`,
``clamp`` and ``scalars`` in `rule`; the
statistics' dtypes (``stat_dtype``, ``element_dtype``, ``abs_sq``) in
`dtypes`; one leaf of an update
(`LeafStep`) in `step`;
`scale_by_rule` in `transform`;
`rates_of` in `rates`. This package
re-exports them all.
"""

from optax_neuronlr._src.engine.dtypes import abs_sq
from optax_neuronlr._src.engine.dtypes import element_dtype
from optax_neuronlr._src.engine.dtypes import real_part
from optax_neuronlr._src.engine.dtypes import stat_dtype
from optax_neuronlr._src.engine.rates import rates_of
from optax_neuronlr._src.engine.rule import ENGINE_SCALARS
from optax_neuronlr._src.engine.rule import REDUCTIONS
from optax_neuronlr._src.engine.rule import Hyper
from optax_neuronlr._src.engine.rule import LeafContext
from optax_neuronlr._src.engine.rule import Rule
from optax_neuronlr._src.engine.rule import Stats
from optax_neuronlr._src.engine.rule import clamp
from optax_neuronlr._src.engine.rule import scalars
from optax_neuronlr._src.engine.step import LeafStep
from optax_neuronlr._src.engine.transform import scale_by_rule
from optax_neuronlr._src.rule_state import RuleState

__all__ = (
    "ENGINE_SCALARS",
    "REDUCTIONS",
    "Hyper",
    "LeafContext",
    "LeafStep",
    "Rule",
    "RuleState",
    "Stats",
    "abs_sq",
    "clamp",
    "element_dtype",
    "rates_of",
    "real_part",
    "scalars",
    "scale_by_rule",
    "stat_dtype",
)
