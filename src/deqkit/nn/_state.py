"""A DEQ state (a tensor, or a tuple of tensors for multi-scale states) and its packing into
one flat ``[B, N]`` batch of vectors, the form the solvers iterate on."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Packer", "State"]

State = Tensor | tuple[Tensor, ...]
"""A DEQ state: one batch-first tensor ``[B, ...]``, or a non-empty tuple of them with the
same batch size ``B`` (a multi-scale state)."""


@dataclass(frozen=True)
class Packer:
    """Flattens a :data:`State` to ``[B, N]`` and back; built from an example state.

    ``N`` is the number of entries of one sample over every tensor of the state. Packing
    ``(a [B, 4], b [B, 2, 3])`` gives ``[B, 10]`` (``a``'s entries, then ``b``'s);
    unpacking splits a ``[B, 10]`` tensor back into that tuple. A plain tensor ``[B, ...]``
    packs to ``[B, prod(...)]``, a view where its memory allows.

    Attributes:
        shapes: The shape of each tensor of the example state, batch dimension included.
        is_tuple: Whether the state is a tuple (``False`` for a plain tensor).
    """

    shapes: tuple[torch.Size, ...]
    is_tuple: bool

    @classmethod
    def of(cls, state: State, name: str = "z0") -> Packer:
        """The packer of states shaped like ``state``.

        Raises:
            TypeError: ``state`` is neither a tensor nor a non-empty tuple of tensors.
            ValueError: a tensor is 0-D, or their batch sizes differ; ``name`` (default
                ``"z0"``) names the state in the message.
        """
        parts = state if isinstance(state, tuple) else (state,)
        if not parts or not all(isinstance(t, Tensor) for t in parts):
            raise TypeError(f"{name} must be a tensor or a non-empty tuple of tensors")
        batch = {t.shape[0] if t.dim() else None for t in parts}
        if len(batch) != 1 or None in batch:
            raise ValueError(
                f"{name}: every tensor must be batch-first with the same batch size, got shapes "
                f"{[tuple(t.shape) for t in parts]}"
            )
        return cls(tuple(t.shape for t in parts), isinstance(state, tuple))

    def pack(self, state: State, name: str = "f(z, x)") -> Tensor:
        """``state`` (shaped like the example) as one ``[B, N]`` tensor.

        Raises:
            ValueError: ``state`` is not shaped like the example; ``name`` (default
                ``"f(z, x)"``, what produced it) names it in the message.
        """
        parts = state if isinstance(state, tuple) else (state,)
        shapes = (
            tuple(t.shape for t in parts) if all(isinstance(t, Tensor) for t in parts) else None
        )
        if isinstance(state, tuple) != self.is_tuple or shapes != self.shapes:
            got = shapes if shapes is not None else type(state).__name__
            raise ValueError(
                f"{name} must return a state shaped like z: expected "
                f"{self._describe(self.shapes)}, got {self._describe(got)}"
            )
        B = parts[0].shape[0]
        if len(parts) == 1:
            return parts[0] if parts[0].dim() == 2 else parts[0].reshape(B, -1)
        return torch.cat([t.reshape(B, -1) for t in parts], dim=1)

    def unpack(self, flat: Tensor) -> State:
        """A ``[B, N]`` tensor back as a state shaped like the example."""
        if not self.is_tuple:  # one tensor: a reshape (a view where memory allows)
            return flat if flat.shape == self.shapes[0] else flat.reshape(self.shapes[0])
        sizes = [s[1:].numel() for s in self.shapes]
        parts = tuple(
            t.reshape(s) for t, s in zip(torch.split(flat, sizes, dim=1), self.shapes, strict=True)
        )
        return parts if self.is_tuple else parts[0]

    @staticmethod
    def _describe(shapes) -> str:
        if isinstance(shapes, str):
            return shapes
        return ", ".join(str(tuple(s)) for s in shapes)
