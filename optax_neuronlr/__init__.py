"""optax_neuronlr: dynamic per-neuron and per-parameter learning rates for optax.

Every per-unit strategy is a `Rule` run by `scale_by_rule`, the
one engine, which users can extend. Every strategy is an
``optax.GradientTransformationExtraArgs``: a ``scale_by_<name>`` transform
returning ``+rate * direction`` and an alias ``<name>`` that chains
``optax.scale(-1.0)``. Rates can be kept per element, neuron, block, tensor or
for the whole model, on top of any optax direction, and read back with
`learning_rates`.
"""

from optax_neuronlr import plot
from optax_neuronlr import schedules
from optax_neuronlr._src.hyperparams import get_hyperparams
from optax_neuronlr._src.param_groups import param_groups
from optax_neuronlr._src.param_groups import ParamGroups
from optax_neuronlr._src.path_labels import path_labels
from optax_neuronlr._src.hyperparams import set_hyperparams
from optax_neuronlr._src.engine import clamp
from optax_neuronlr._src.engine import LeafContext
from optax_neuronlr._src.engine import Rule
from optax_neuronlr._src.rule_state import RuleState
from optax_neuronlr._src.engine import scale_by_rule
from optax_neuronlr._src.readers import learning_rates
from optax_neuronlr._src.rule_transform import rule_transform
from optax_neuronlr._src.group_edits import add_param_group
from optax_neuronlr._src.group_edits import drop_param_group
from optax_neuronlr._src.nnx_glue import rebuild_nnx_optimizer
from optax_neuronlr._src.migrate import rebuild_state
from optax_neuronlr._src.group_edits import reset_param_group
from optax_neuronlr._src.readers import learning_rates_by_state
from optax_neuronlr._src.readers import plateau_learning_rate
from optax_neuronlr._src.readers import rate_summary
from optax_neuronlr._src.rate_record import record_learning_rate
from optax_neuronlr._src.rate_record import RecordLearningRateState
from optax_neuronlr._src.rules.adam_mini import adam_mini
from optax_neuronlr._src.rules.adam_mini import adam_mini_blocks
from optax_neuronlr._src.rules.adam_mini import adam_mini_partition
from optax_neuronlr._src.rules.adam_mini import adam_mini_weight_decay_mask
from optax_neuronlr._src.rules.adam_mini import AdamMini
from optax_neuronlr._src.rules.adam_mini import AdamMiniLeaf
from optax_neuronlr._src.rules.adam_mini import AdamMiniPartition
from optax_neuronlr._src.rules.adam_mini import scale_by_adam_mini
from optax_neuronlr._src.rules.adam_mini import ScaleByAdamMiniState
from optax_neuronlr._src.rules.hypergradient import adam_hd
from optax_neuronlr._src.rules.hypergradient import Hypergradient
from optax_neuronlr._src.rules.hypergradient import hypergradient_lr
from optax_neuronlr._src.rules.hypergradient import HypergradientLRState
from optax_neuronlr._src.rules.hypergradient import scale_by_hypergradient_lr
from optax_neuronlr._src.rules.hypergradient import sgd_hd
from optax_neuronlr._src.rules.muon import muon
from optax_neuronlr._src.rules.muon import normuon_labels
from optax_neuronlr._src.rules.muon import scale_by_muon
from optax_neuronlr._src.rules.muon import ScaleByMuonState
from optax_neuronlr._src.rules.nero import nero
from optax_neuronlr._src.rules.nero import Nero
from optax_neuronlr._src.rules.nero import project_neurons
from optax_neuronlr._src.rules.nero import ProjectNeuronsState
from optax_neuronlr._src.rules.nero import scale_by_nero
from optax_neuronlr._src.rules.nero import ScaleByNeroState
from optax_neuronlr._src.rules.neuron_norm import neuron_norm_sgd
from optax_neuronlr._src.rules.neuron_norm import NeuronNorm
from optax_neuronlr._src.rules.neuron_norm import scale_by_neuron_norm
from optax_neuronlr._src.rules.neuron_norm import scale_sgd
from optax_neuronlr._src.rules.neuron_norm import scale_sgd_labels
from optax_neuronlr._src.rules.neuron_norm import ScaleByNeuronNormState
from optax_neuronlr._src.rules.normuon import NorMuon
from optax_neuronlr._src.rules.normuon import ScaleByNorMuonState
from optax_neuronlr._src.rules.normuon import normuon
from optax_neuronlr._src.rules.normuon import scale_by_normuon
from optax_neuronlr._src.rules.seed000 import grad_history_lr
from optax_neuronlr._src.rules.seed000 import grad_magnitude_lr
from optax_neuronlr._src.rules.seed000 import GradHistory
from optax_neuronlr._src.rules.seed000 import GradMagnitude
from optax_neuronlr._src.rules.seed000 import scale_by_grad_history_lr
from optax_neuronlr._src.rules.seed000 import scale_by_grad_magnitude_lr
from optax_neuronlr._src.rules.seed000 import scale_by_sign_consistency_lr
from optax_neuronlr._src.rules.seed000 import ScaleByGradHistoryLRState
from optax_neuronlr._src.rules.seed000 import ScaleByGradMagnitudeLRState
from optax_neuronlr._src.rules.seed000 import ScaleBySignConsistencyLRState
from optax_neuronlr._src.rules.seed000 import sign_consistency_lr
from optax_neuronlr._src.rules.seed000 import SignConsistency
from optax_neuronlr._src.rules.trust_ratio import lamb
from optax_neuronlr._src.rules.trust_ratio import lars
from optax_neuronlr._src.rules.trust_ratio import scale_by_trust_ratio
from optax_neuronlr._src.rules.trust_ratio import ScaleByTrustRatioState
from optax_neuronlr._src.rules.trust_ratio import TrustRatio
from optax_neuronlr._src.layerwise import layerwise_multipliers
from optax_neuronlr._src.model_layout import AXIS_ROLES
from optax_neuronlr._src.model_layout import LeafRole
from optax_neuronlr._src.model_layout import MatrixView
from optax_neuronlr._src.model_layout import model_layout
from optax_neuronlr._src.model_layout import ModelLayout
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
from optax_neuronlr._src.plateau import scale_by_reduce_lr_on_plateau
from optax_neuronlr._src.units import Blocks
from optax_neuronlr._src.units import GRANULARITIES
from optax_neuronlr._src.units import Neurons

# The one place the version lives; pyproject.toml reads it (CHANGELOG.md).
__version__ = "0.4.0.dev0"

__all__ = (
    "AdamMini",
    "AdamMiniLeaf",
    "AdamMiniPartition",
    "Blocks",
    "GRANULARITIES",
    "GradHistory",
    "GradMagnitude",
    "Hypergradient",
    "HypergradientLRState",
    "LayoutRow",
    "LeafContext",
    "LeafRole",
    "MatrixView",
    "ModelLayout",
    "NeuronNorm",
    "Nero",
    "Neurons",
    "NorMuon",
    "ScaleByNorMuonState",
    "OptimizerLayout",
    "ParamGroups",
    "ProjectNeuronsState",
    "RateRecord",
    "RateRecorder",
    "RecordLearningRateState",
    "ReduceLROnPlateauState",
    "Rule",
    "RuleState",
    "ScaleByAdamMiniState",
    "ScaleByGradHistoryLRState",
    "ScaleByGradMagnitudeLRState",
    "ScaleByLeafState",
    "ScaleByMuonState",
    "ScaleByNeroState",
    "ScaleByNeuronNormState",
    "ScaleBySignConsistencyLRState",
    "ScaleByTrustRatioState",
    "SignConsistency",
    "TrustRatio",
    "adam_hd",
    "add_param_group",
    "adam_mini",
    "adam_mini_blocks",
    "adam_mini_partition",
    "adam_mini_weight_decay_mask",
    "clamp",
    "drop_param_group",
    "get_hyperparams",
    "grad_history_lr",
    "grad_magnitude_lr",
    "hypergradient_lr",
    "lamb",
    "lars",
    "layerwise_multipliers",
    "learning_rates",
    "learning_rates_by_state",
    "model_layout",
    "AXIS_ROLES",
    "muon",
    "nero",
    "neuron_norm_sgd",
    "normuon",
    "normuon_labels",
    "optimizer_layout",
    "param_groups",
    "path_labels",
    "plateau_learning_rate",
    "plot",
    "project_neurons",
    "rate_summary",
    "rebuild_nnx_optimizer",
    "rebuild_state",
    "record_learning_rate",
    "reduce_lr_on_plateau",
    "reset_param_group",
    "rule_transform",
    "scale_by_adam_mini",
    "scale_by_leaf",
    "scale_by_muon",
    "scale_by_nero",
    "scale_by_normuon",
    "scale_by_reduce_lr_on_plateau",
    "scale_by_neuron_norm",
    "scale_by_rule",
    "scale_by_grad_history_lr",
    "scale_by_hypergradient_lr",
    "scale_by_grad_magnitude_lr",
    "scale_by_sign_consistency_lr",
    "scale_by_trust_ratio",
    "scale_sgd",
    "scale_sgd_labels",
    "schedules",
    "set_hyperparams",
    "sgd_hd",
    "state_shardings",
    "sign_consistency_lr",
)
