"""Dropout whose mask costs an eighth of the random numbers on CPU.

On these CPUs drawing one random number per element made dropout 30% of a
training step. Each 64-bit draw gives eight bytes, and a byte compared with
round(p * 256) keeps an element with probability within 1/512 of 1 - p.
On GPUs the regular kernel is fast and is used unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    if not training or p <= 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    n = x.numel()
    threshold = round(p * 256)
    draws = torch.randint(-(2**63), 2**63 - 1, ((n + 7) // 8,), dtype=torch.int64, device=x.device)
    keep = draws.view(torch.uint8)[:n].view(x.shape) >= threshold
    scale = 256.0 / (256 - threshold)  # unbiased for the rate actually used
    return x * keep.to(x.dtype).mul_(scale)


class Dropout(torch.nn.Module):
    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
