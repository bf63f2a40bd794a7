"""Packing a tensor or a tuple of tensors (multi-scale states) into one flat batch vector."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

State = Tensor | tuple[Tensor, ...]


@dataclass(frozen=True)
class Packer:
    """Flattens a state to ``[B, N]`` and back. Built from an example state."""

    shapes: tuple[torch.Size, ...]
    is_tuple: bool

    @classmethod
    def of(cls, state: State, name: str = "z0") -> Packer:
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
            return parts[0].reshape(B, -1)
        return torch.cat([t.reshape(B, -1) for t in parts], dim=1)

    def unpack(self, flat: Tensor) -> State:
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
