"""Views of image tensors in memory order, shared by the optimiser and the losses."""

from __future__ import annotations

import torch

INDEX_LIMIT = 2**31 - 1  # elements a GPU kernel indexes with int32 (cuDNN, cuBLAS: PyTorch issues #17897, #80020)


def flatten(t: torch.Tensor) -> torch.Tensor:
    """[N, ...] -> [N, P] in memory order, as a view (contiguous or channels_last images).

    Elementwise work and dot products never need pixels in a particular
    order, only the same order for every tensor involved, and a view lets
    a channels_last image be read and updated in place without a copy.
    """
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1).reshape(len(t), -1)
    return t.view(len(t), -1)


def like(t: torch.Tensor, layout: torch.Tensor) -> torch.Tensor:
    """`t` in `layout`'s memory format (`t` itself when it already is, or when they are the same)."""
    if t.dim() == 4 and layout.is_contiguous(memory_format=torch.channels_last) and not layout.is_contiguous():
        return t.contiguous(memory_format=torch.channels_last)
    return t.contiguous()
