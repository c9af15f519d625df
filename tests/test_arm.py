"""The ARM computes the paper's composition: conv 5x5, ReLU, CBAM, zeroed padding,
1x1 projection, masked BatchNorm, in that order. The module reorders the last steps
for speed, and in evaluation refines large batches of maps in groups; this pins it
to the literal order on one batch, in training (BatchNorm statistics and gradients)
and in evaluation."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from model.arm import AttentionRefinementModule
from model.config import HMERConfig


def _literal(arm: AttentionRefinementModule, coverage: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    cov = F.relu(arm.conv(coverage))
    cov = arm.cbam(cov)  # channel then spatial attention, each multiplying the dc-channel map
    if mask is not None:
        cov = cov.masked_fill(mask, 0.0)
    return arm.post_norm(arm.proj(cov), mask)


def _arm() -> AttentionRefinementModule:
    torch.manual_seed(0)
    arm = AttentionRefinementModule(HMERConfig.tiny())
    for m in arm.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 2.0)
            m.bias.data.uniform_(-0.5, 0.5)
    return arm


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("grouped", [False, True])
def test_arm_equals_the_literal_composition(training: bool, padded: bool, channels_last: bool, grouped: bool):
    arm = _arm()
    reference = copy.deepcopy(arm)
    arm.train(training)
    reference.train(training)
    channels = arm.conv.in_channels
    coverage = torch.rand(6, channels, 5, 9) * 3
    if grouped:  # evaluation refines 2 maps at a time, 3 groups; training must still see one batch (BN statistics)
        arm.eval_group_elements = 2 * coverage[0].numel() + 1
    mask = None
    if padded:
        mask = torch.zeros(6, 1, 5, 9, dtype=torch.bool)
        mask[::2, :, 3:] = True
        mask[1, :, :, 6:] = True
    ours_in = coverage.clone()
    if channels_last:  # as in a model trained with `channels_last`: the conv output, and so `_project`, follow
        ours_in = ours_in.contiguous(memory_format=torch.channels_last)
    ours_in.requires_grad_()
    ref_in = coverage.clone().requires_grad_()
    ours = arm(ours_in, mask)
    expected = _literal(reference, ref_in, mask)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    if training:
        weights = torch.randn_like(ours)
        (ours * weights).sum().backward()
        (expected * weights).sum().backward()
        torch.testing.assert_close(ours_in.grad, ref_in.grad, atol=1e-5, rtol=1e-4)
        for (name, p), q in zip(arm.named_parameters(), reference.parameters()):
            torch.testing.assert_close(p.grad, q.grad, atol=1e-4, rtol=1e-4, msg=lambda m: f"{name}: {m}")
        torch.testing.assert_close(arm.post_norm.bn.running_mean, reference.post_norm.bn.running_mean)
        torch.testing.assert_close(arm.post_norm.bn.running_var, reference.post_norm.bn.running_var)


@pytest.mark.parametrize("size", [(1, 1), (3, 5), (9, 40)])
def test_the_spatial_gate_as_shifted_sums_equals_the_convolution(size):
    # The compiled decoder computes CBAM's spatial convolution as shifted multiply-adds,
    # also on grids smaller than its kernel.
    from model.arm import SpatialAttention

    torch.manual_seed(0)
    gate = SpatialAttention().eval()
    with torch.no_grad():
        gate.bn.running_mean.fill_(0.3)
        gate.bn.running_var.fill_(1.7)
        x = torch.rand(4, 24, *size)
        want = gate.gate(x)
        gate.as_shifted_sums = True
        got = gate.gate(x)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_the_convolution_in_bf16_is_the_fp32_one_rounded_and_only_in_evaluation():
    # The app computes the ARM's 5x5 convolution in bf16 where the CPU has bf16 units: the
    # coverage and the weights rounded to bf16, the result handed on in fp32.
    arm = _arm().eval()
    coverage = torch.rand(6, arm.conv.in_channels, 5, 9) * 3
    with torch.no_grad():
        fp32 = arm(coverage, None)
        arm.conv_dtype = torch.bfloat16
        bf16 = arm(coverage, None)
        rounded = arm.conv.weight.bfloat16().float()
        want_conv = F.conv2d(coverage.bfloat16().float(), rounded, arm.conv.bias.bfloat16().float(), padding=2)
        torch.testing.assert_close(arm._convolve(coverage), want_conv, atol=0.02, rtol=0.01)  # bf16 output
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, fp32)
    torch.testing.assert_close(bf16, fp32, atol=0.05, rtol=0.05)
    arm.train()  # training keeps fp32 (and its gradients) whatever is set
    torch.testing.assert_close(arm._convolve(coverage), arm.conv(coverage))
