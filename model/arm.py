"""Attention Refinement Module: coverage of past attention, refined by CBAM.

The ARM turns how much each image position has already been attended into a
penalty that is subtracted from the next cross-attention logits, so the decoder
neither skips ink nor reads it twice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import HMERConfig


class ChannelAttention(nn.Module):
    """Squeeze-and-excite over both average and max pooled features (CBAM, part 1)."""

    def __init__(self, channels: int, ratio: int = 2) -> None:
        super().__init__()
        self.excitation = nn.Sequential(
            nn.Conv2d(channels, channels // ratio, kernel_size=1),
            nn.ReLU(),
            nn.Conv2d(channels // ratio, channels, kernel_size=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        # x: [n, c, h, w]. The shared MLP runs once on both pooled vectors, as
        # linear layers (1x1 convs on 1x1 maps cost far more per call on CPU).
        n = x.shape[0]
        pooled = torch.cat((x.mean(dim=(2, 3)), x.amax(dim=(2, 3))))  # [2n, c]
        first, last = self.excitation[0], self.excitation[2]
        hidden = F.relu(F.linear(pooled, first.weight.flatten(1), first.bias))
        both = F.linear(hidden, last.weight.flatten(1), last.bias)  # [2n, c]
        return x * torch.sigmoid(both[:n] + both[n:])[:, :, None, None]


class SpatialAttention(nn.Module):
    """A 7x7 conv over the channel-wise average and max maps (CBAM, part 2)."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1)

    # True on the copy `model.compiled_step` exports: the convolution as shifted
    # multiply-adds, which the compiler fuses into one loop. oneDNN's kernel for 2 input
    # channels and 1 output costs about 0.16 ms per call, over 3 ms per recognition; eagerly,
    # the 2*k*k operators would cost more still.
    as_shifted_sums = False

    def _conv(self, pooled: Tensor) -> Tensor:
        if not self.as_shifted_sums:
            return self.conv(pooled)
        size = self.conv.kernel_size[0]
        h, w = pooled.shape[-2:]
        padded = F.pad(pooled, [size // 2] * 4)  # [n, 2, h+k-1, w+k-1]
        weight = self.conv.weight[0]  # [2, k, k]
        out = None
        for i in range(size):
            for j in range(size):
                term = padded[:, :, i : i + h, j : j + w] * weight[:, i, j, None, None]  # [n, 2, h, w]
                out = term if out is None else out + term
        return out.sum(dim=1, keepdim=True)  # [n, 1, h, w]

    def gate(self, x: Tensor) -> Tensor:
        # x: [n, c, h, w] -> the weight of each position [n, 1, h, w]
        pooled = torch.cat((x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)), dim=1)  # [n, 2, h, w]
        return torch.sigmoid(self.bn(self._conv(pooled)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(x)  # [n, c, h, w]


class CBAM(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channel_attention = ChannelAttention(channels)
        self.spatial_attention = SpatialAttention()

    def forward(self, x: Tensor) -> Tensor:
        return self.spatial_attention(self.channel_attention(x))


class MaskedBatchNorm(nn.Module):
    """BatchNorm whose statistics (and output) cover only the unpadded positions."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(num_features)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        # x: [n, c, h, w]; mask: [n, 1, h, w], True = padding (None: no padding)
        if not self.training:
            # Eval BN is per-element affine: normalize everywhere, keep the padding as it was.
            bn = self.bn
            scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
            shift = bn.bias - bn.running_mean * scale
            y = x * scale[:, None, None] + shift[:, None, None]
            return y if mask is None else torch.where(mask, x, y)
        if mask is None:
            mask = torch.zeros_like(x[:, :1], dtype=torch.bool)
        x = x.permute(0, 2, 3, 1)  # [n, h, w, c]
        valid = ~mask[:, 0]
        out = x.clone()
        out[valid] = self.bn(x[valid])
        return out.permute(0, 3, 1, 2)


class AttentionRefinementModule(nn.Module):
    # In evaluation, maps are refined in groups of at most this many input elements. A
    # teacher-forced pass over long hypotheses hands the ARM thousands of maps at once,
    # whose intermediates overflow the CPU's caches: measured on 1,340 maps of 16x10x35,
    # 141 ms whole against 72 ms in groups (recognition: -9% on the slowest tenth).
    eval_group_elements = 2_000_000
    # In evaluation, the 5x5 convolution computes in this dtype when set (None: its weights'
    # own, fp32). The app sets bf16 on CPUs with bf16 units (`Recognizer`): the convolution is
    # most of a long expression's arithmetic, and bf16 runs it in a fifth of the time there.
    conv_dtype: torch.dtype | None = None

    def __init__(self, config: HMERConfig) -> None:
        super().__init__()
        if not (config.cross_coverage or config.self_coverage):
            raise ValueError("the ARM needs cross_coverage, self_coverage or both")
        in_channels = config.nhead * (int(config.cross_coverage) + int(config.self_coverage))
        self.cross_coverage = config.cross_coverage
        self.self_coverage = config.self_coverage
        self.conv = nn.Conv2d(in_channels, config.dc, kernel_size=5, padding=2)
        self.cbam = CBAM(config.dc) if config.cbam else None
        self.proj = nn.Conv2d(config.dc, config.nhead, kernel_size=1, bias=False)
        self.post_norm = MaskedBatchNorm(config.nhead)

    def coverage_input(self, prev: Tensor | None, curr: Tensor | None, dim: int = 1) -> Tensor:
        """Stack the coverage maps this ARM reads along the heads dimension `dim`:
        [n, H, L] each -> [n, k*H, L] (and likewise with more leading dimensions)."""
        parts = []
        if self.cross_coverage:
            parts.append(prev)
        if self.self_coverage:
            parts.append(curr)
        return torch.cat(parts, dim=dim)

    def _project(self, x: Tensor) -> Tensor:
        """The 1x1 projection [n, dc, h, w] -> [n, H, h, w] as one matmul: on CPU a 1x1
        convolution with so few channels cost 10x more (measured 37 ms against 3 ms for
        1,680 maps of 10x35, as a rescoring pass has)."""
        weight = self.proj.weight.flatten(1)  # [H, dc]
        if x.is_contiguous(memory_format=torch.channels_last):  # stored [n, h, w, dc]
            return (x.permute(0, 2, 3, 1) @ weight.t()).permute(0, 3, 1, 2)
        n, c, h, w = x.shape
        return (weight @ x.reshape(n, c, h * w)).view(n, -1, h, w)

    def forward(self, coverage: Tensor, mask: Tensor | None) -> Tensor:
        # coverage: [n, k*H, h, w] attention summed over the past steps; mask: [n, 1, h, w] or None
        n = coverage.shape[0]
        if self.training or n < 2 or coverage.numel() <= self.eval_group_elements:
            return self._refine(coverage, mask)
        rows = max(1, self.eval_group_elements // coverage[0].numel())  # eval: each map is refined alone
        masks = mask.split(rows) if mask is not None else [None] * -(-n // rows)
        return torch.cat([self._refine(c, m) for c, m in zip(coverage.split(rows), masks)])

    def _convolve(self, coverage: Tensor) -> Tensor:
        dtype = self.conv_dtype
        if dtype is None or self.training or dtype == coverage.dtype:
            return self.conv(coverage)
        bias = self.conv.bias.to(dtype) if self.conv.bias is not None else None
        out = F.conv2d(coverage.to(dtype), self.conv.weight.to(dtype), bias, padding=self.conv.padding)
        return out.to(coverage.dtype)

    def _refine(self, coverage: Tensor, mask: Tensor | None) -> Tensor:
        cov = F.relu(self._convolve(coverage), inplace=True)  # [n, dc, h, w]
        if self.cbam is None:
            out = self._project(cov)  # [n, H, h, w]
        else:
            # CBAM's spatial gate is one weight per position and proj a bias-free 1x1 conv, so
            # gating after proj gives the same result with two passes over H channels instead
            # of dc.
            cov = self.cbam.channel_attention(cov)
            out = self._project(cov) * self.cbam.spatial_attention.gate(cov)  # [n, H, h, w]
        if mask is not None:  # likewise zeroing padding commutes with proj
            out = out.masked_fill(mask, 0.0)
        return self.post_norm(out, mask)
