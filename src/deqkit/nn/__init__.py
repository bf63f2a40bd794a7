"""DEQ layers, their gradients, stabilisers and training aids."""

from ._deq import DEQ, DEQInfo
from ._gradients import Gradient, Implicit, Phantom, Unrolled, make_gradient
from ._norms import apply_spectral_norm, apply_weight_norm
from ._recipe import Recipe, StepPlan
from ._regularizers import jacobian_frobenius, mixed_init

__all__ = [
    "DEQ",
    "DEQInfo",
    "Gradient",
    "Implicit",
    "Phantom",
    "Recipe",
    "StepPlan",
    "Unrolled",
    "apply_spectral_norm",
    "apply_weight_norm",
    "jacobian_frobenius",
    "make_gradient",
    "mixed_init",
]
