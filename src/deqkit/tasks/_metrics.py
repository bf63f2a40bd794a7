"""Per-sample accuracy for binary per-position targets (prefix sums, maze paths)."""

from __future__ import annotations

from torch import Tensor


def hard_prediction(pred: Tensor, target: Tensor) -> Tensor:
    """Turn logits ``[n, 2, *S]`` into labels ``[n, *S]``; check hard labels ``[n, *S]``."""
    if target.is_floating_point() or target.is_complex():
        raise TypeError(f"Invalid target dtype: {target.dtype} (expected an integer or bool)")
    if target.ndim < 2:
        raise ValueError(f"Invalid target shape: {tuple(target.shape)} (expected [n, ...])")
    if pred.ndim == target.ndim + 1:
        if pred.shape[1] != 2 or pred.shape[:1] + pred.shape[2:] != target.shape:
            raise ValueError(
                f"Invalid logits shape: {tuple(pred.shape)} "
                f"(expected [n, 2, ...] matching target {tuple(target.shape)})"
            )
        return pred.argmax(dim=1)
    if pred.shape != target.shape:
        raise ValueError(
            f"Invalid prediction shape: {tuple(pred.shape)} (expected logits "
            f"[n, 2, ...] or labels of the target's shape {tuple(target.shape)})"
        )
    if pred.is_floating_point() or pred.is_complex():
        # A float of the target's shape could be a probability, a single logit or a 0/1 mask;
        # guessing would silently score the wrong thing.
        raise TypeError(
            f"Invalid prediction dtype: {pred.dtype}; pass two-class logits [n, 2, ...] or "
            "integer/bool labels (e.g. `(p > 0.5).long()` for probabilities)"
        )
    return pred


def exact_match(pred: Tensor, target: Tensor) -> Tensor:
    """Whether each sample is right at every position.

    The accuracy of Bansal et al. (2022) for prefix sums and mazes: a string (or maze) counts
    only if every bit (pixel) is right.

    Args:
        pred: Two-class logits ``[n, 2, *S]`` (class 1 means bit 1 / on the path; the label is
            the argmax over dim 1, ties going to 0), or integer/bool labels ``[n, *S]``.
        target: Integer or bool labels ``[n, *S]`` in ``{0, 1}``; ``S`` is ``(length,)`` for
            prefix sums and ``(H, W)`` for mazes.

    Returns:
        Bool tensor ``[n]``. ``exact_match(pred, y).float().mean()`` is the usual accuracy.

    Raises:
        ValueError: If the shapes do not match either convention.
        TypeError: If ``target`` is floating point, or ``pred`` is floating point with the
            target's shape (ambiguous: probabilities, single logits or a mask).
    """
    labels = hard_prediction(pred, target)
    return (labels == target).flatten(1).all(dim=1)


def bit_accuracy(pred: Tensor, target: Tensor) -> Tensor:
    """Fraction of positions right in each sample.

    Args:
        pred: Two-class logits ``[n, 2, *S]`` or integer/bool labels ``[n, *S]``, as in
            :func:`exact_match`.
        target: Integer or bool labels ``[n, *S]``.

    Returns:
        Float32 tensor ``[n]`` with values in ``[0, 1]``.

    Raises:
        ValueError: If the shapes do not match either convention.
        TypeError: As in :func:`exact_match`.
    """
    labels = hard_prediction(pred, target)
    return (labels == target).flatten(1).float().mean(dim=1)
