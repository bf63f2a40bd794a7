"""DEQ layers, their gradients, stabilisers and training aids."""

from ._deq import DEQ, DEQInfo
from ._norms import apply_spectral_norm, apply_weight_norm
from ._regularizers import jacobian_frobenius, mixed_init

__all__ = [
    "DEQ",
    "DEQInfo",
    "apply_spectral_norm",
    "apply_weight_norm",
    "jacobian_frobenius",
    "mixed_init",
]
