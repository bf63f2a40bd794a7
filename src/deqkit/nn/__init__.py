"""DEQ layers, their gradients, stabilisers and training aids.

* :class:`DEQ`: the layer; :class:`DEQSettings` its settings (solver, tolerance, budget,
  gradient) as one frozen object; :class:`DEQInfo` what a forward pass reports.
* :class:`Implicit`, :class:`Phantom`, :class:`Unrolled` (:class:`Gradient`): its
  gradients, also by alias name (:func:`available_gradients`, :func:`make_gradient`).
* :class:`Recipe` / :class:`StepPlan`: stabilisers and training aids, composed per step;
  the pieces on their own: :func:`apply_spectral_norm`, :func:`apply_weight_norm`,
  :func:`apply_norm_bound` (with :func:`operator_norm_bound`, a guaranteed bound),
  :func:`jacobian_frobenius`, :func:`mixed_init`.
* :class:`Packer` and :data:`State`: a state (a tensor or a tuple of tensors) packed into one
  ``[B, N]`` batch of vectors and back, for instruments over DEQ states.
"""

from ._deq import DEQ, DEQInfo
from ._gradients import (
    Gradient,
    Implicit,
    Phantom,
    Unrolled,
    available_gradients,
    make_gradient,
)
from ._norms import apply_norm_bound, apply_spectral_norm, apply_weight_norm, operator_norm_bound
from ._recipe import Recipe, StepPlan
from ._regularizers import jacobian_frobenius, mixed_init
from ._settings import DEQSettings
from ._state import Packer, State

__all__ = [
    "DEQ",
    "DEQInfo",
    "DEQSettings",
    "Gradient",
    "Implicit",
    "Packer",
    "Phantom",
    "Recipe",
    "State",
    "StepPlan",
    "Unrolled",
    "apply_norm_bound",
    "apply_spectral_norm",
    "apply_weight_norm",
    "available_gradients",
    "jacobian_frobenius",
    "make_gradient",
    "mixed_init",
    "operator_norm_bound",
]
