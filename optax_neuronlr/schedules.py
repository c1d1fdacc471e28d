"""PyTorch ``lr_scheduler`` semantics as optax schedules.

``schedule(k * steps_per_epoch)`` equals the rate PyTorch's scheduler gives
after ``k`` calls of ``scheduler.step()``. See ``reduce_lr_on_plateau`` in the
package root for ``ReduceLROnPlateau``.
"""

from optax_neuronlr._src.schedules import cosine_annealing_lr
from optax_neuronlr._src.schedules import exponential_lr
from optax_neuronlr._src.schedules import lambda_lr
from optax_neuronlr._src.schedules import multi_step_lr
from optax_neuronlr._src.schedules import step_lr

__all__ = (
    "cosine_annealing_lr",
    "exponential_lr",
    "lambda_lr",
    "multi_step_lr",
    "step_lr",
)
