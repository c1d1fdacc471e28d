"""optax_neuronlr: dynamic per-neuron and per-parameter learning rates for optax.

Every strategy is an ``optax.GradientTransformationExtraArgs``: a
``scale_by_<name>`` transform returning ``+rate * direction`` and an alias
``<name>`` that is ready to use as an optimizer. Rates can be kept per element,
per neuron or per tensor, on top of any optax direction, and read back with
:func:`learning_rates`.
"""

from optax_neuronlr import plot
from optax_neuronlr import schedules
from optax_neuronlr._src.groups import get_hyperparams
from optax_neuronlr._src.groups import param_groups
from optax_neuronlr._src.groups import path_labels
from optax_neuronlr._src.groups import set_hyperparams
from optax_neuronlr._src.hypergradient import adam_hd
from optax_neuronlr._src.hypergradient import hypergradient_lr
from optax_neuronlr._src.hypergradient import HypergradientLRState
from optax_neuronlr._src.hypergradient import sgd_hd
from optax_neuronlr._src.inspect import learning_rates
from optax_neuronlr._src.inspect import learning_rates_by_state
from optax_neuronlr._src.inspect import rate_summary
from optax_neuronlr._src.layerwise import layerwise_multipliers
from optax_neuronlr._src.layout import LayoutRow
from optax_neuronlr._src.layout import optimizer_layout
from optax_neuronlr._src.layout import OptimizerLayout
from optax_neuronlr._src.layerwise import scale_by_leaf
from optax_neuronlr._src.layerwise import ScaleByLeafState
from optax_neuronlr._src.plateau import reduce_lr_on_plateau
from optax_neuronlr._src.recorder import RateRecord
from optax_neuronlr._src.recorder import RateRecorder
from optax_neuronlr._src.sharding import state_shardings
from optax_neuronlr._src.plateau import ReduceLROnPlateauState
from optax_neuronlr._src.strategies import grad_history_lr
from optax_neuronlr._src.strategies import grad_magnitude_lr
from optax_neuronlr._src.strategies import scale_by_grad_history_lr
from optax_neuronlr._src.strategies import scale_by_grad_magnitude_lr
from optax_neuronlr._src.strategies import scale_by_sign_consistency_lr
from optax_neuronlr._src.strategies import ScaleByGradHistoryLRState
from optax_neuronlr._src.strategies import ScaleByGradMagnitudeLRState
from optax_neuronlr._src.strategies import ScaleBySignConsistencyLRState
from optax_neuronlr._src.strategies import sign_consistency_lr
from optax_neuronlr._src.units import GRANULARITIES
from optax_neuronlr._src.units import UnitAxes

__version__ = "0.1.0"

__all__ = (
    "GRANULARITIES",
    "HypergradientLRState",
    "LayoutRow",
    "OptimizerLayout",
    "RateRecord",
    "RateRecorder",
    "ReduceLROnPlateauState",
    "ScaleByGradHistoryLRState",
    "ScaleByGradMagnitudeLRState",
    "ScaleByLeafState",
    "ScaleBySignConsistencyLRState",
    "UnitAxes",
    "adam_hd",
    "get_hyperparams",
    "grad_history_lr",
    "grad_magnitude_lr",
    "hypergradient_lr",
    "layerwise_multipliers",
    "learning_rates",
    "learning_rates_by_state",
    "optimizer_layout",
    "param_groups",
    "path_labels",
    "plot",
    "rate_summary",
    "reduce_lr_on_plateau",
    "scale_by_leaf",
    "scale_by_grad_history_lr",
    "scale_by_grad_magnitude_lr",
    "scale_by_sign_consistency_lr",
    "schedules",
    "set_hyperparams",
    "sgd_hd",
    "state_shardings",
    "sign_consistency_lr",
)
