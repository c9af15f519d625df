"""The cached one-token-at-a-time decoder computes exactly what full re-decoding computes."""

from __future__ import annotations

import torch

from model.config import HMERConfig
from model.hmer import HMER


def _model(**changes) -> HMER:
    torch.manual_seed(0)
    # three layers, as in the paper: the ARM then refines two of them
    model = HMER(HMERConfig.tiny().replace(num_decoder_layers=3, **changes))
    # non-trivial BatchNorm statistics, as a trained model has
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    # A penalty as large as a trained model's (several logits), so a wrong coverage shows.
    model.decoder.arm.post_norm.bn.weight.data.uniform_(2.0, 4.0)
    return model.eval()


def _check(model: HMER) -> None:
    imgs = torch.rand(2, 1, 48, 80)
    masks = torch.zeros(2, 48, 80, dtype=torch.bool)
    masks[1, 32:, :] = True
    masks[1, :, 60:] = True
    tokens = torch.randint(4, model.config.vocab_size, (2, 9))
    tokens[:, 0] = 1
    with torch.no_grad():
        memory, mem_mask = model.encode(imgs, masks)
        full_main, full_aux, full_attn = model.decoder(memory, mem_mask, tokens, need_attention=True)
        state = model.decoder.start(memory, mem_mask, torch.arange(2))
        for t in range(tokens.shape[1]):
            main, aux, attn = model.decoder.step(state, tokens[:, t])
            torch.testing.assert_close(main, full_main[:, t], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(aux, full_aux[:, t], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(attn, full_attn[:, :, t], atol=1e-6, rtol=1e-5)


def test_step_equals_full_decoding_with_both_coverages():
    _check(_model())


def test_step_equals_full_decoding_with_cross_coverage_only():
    _check(_model(self_coverage=False, cbam=False))


def test_reorder_keeps_the_chosen_sequences():
    model = _model()
    imgs = torch.rand(1, 1, 32, 64)
    masks = torch.zeros(1, 32, 64, dtype=torch.bool)
    with torch.no_grad():
        memory, mem_mask = model.encode(imgs, masks)
        state = model.decoder.start(memory, mem_mask, torch.zeros(3, dtype=torch.long))
        model.decoder.step(state, torch.tensor([1, 1, 1]))
        model.decoder.step(state, torch.tensor([10, 20, 30]))
        state.reorder(torch.tensor([2, 2, 0]))
        main, _, _ = model.decoder.step(state, torch.tensor([40, 41, 42]))
        full, _, _ = model.decoder(memory.repeat(3, 1, 1, 1), mem_mask.repeat(3, 1, 1),
                                   torch.tensor([[1, 30, 40], [1, 30, 41], [1, 10, 42]]))  # fmt: skip
    torch.testing.assert_close(main, full[:, 2], atol=1e-5, rtol=1e-5)


def test_beam_like_reorders_over_many_steps_match_full_decoding():
    # children of one parent share its coverage until they step (the ARM runs once per parent)
    model = _model()
    imgs = torch.rand(1, 1, 48, 80)
    masks = torch.zeros(1, 48, 80, dtype=torch.bool)
    gen = torch.Generator().manual_seed(3)
    n = 5
    prefixes = [[1] for _ in range(n)]
    with torch.no_grad():
        memory, mem_mask = model.encode(imgs, masks)
        state = model.decoder.start(memory, mem_mask, torch.zeros(n, dtype=torch.long))
        last = torch.ones(n, dtype=torch.long)
        for _ in range(7):
            main, _, attn = model.decoder.step(state, last)
            full, _, full_attn = model.decoder(memory.expand(n, -1, -1, -1), mem_mask.expand(n, -1, -1),
                                               torch.tensor(prefixes), need_attention=True)  # fmt: skip
            torch.testing.assert_close(main, full[:, -1], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(attn, full_attn[:, :, -1], atol=1e-6, rtol=1e-5)
            index = torch.randint(0, 2, (n,), generator=gen)  # few parents, as in a beam
            state.reorder(index)
            last = torch.randint(4, model.config.vocab_size, (n,), generator=gen)
            prefixes = [prefixes[i] + [int(t)] for i, t in zip(index.tolist(), last)]


def test_sequences_sharing_an_image_decode_as_if_each_had_its_own_copy():
    # Rescoring and bidirectional training pass each image once with an image index;
    # the logits must be those of the memory repeated per sequence, padding included.
    model = _model()
    imgs = torch.rand(2, 1, 48, 80)
    masks = torch.zeros(2, 48, 80, dtype=torch.bool)
    masks[1, :, 50:] = True
    tokens = torch.randint(4, model.config.vocab_size, (5, 7))
    image_index = torch.tensor([1, 0, 1, 1, 0])
    with torch.no_grad():
        memory, mem_mask = model.encode(imgs, masks)
        copied = model.decoder(memory[image_index], mem_mask[image_index], tokens, need_attention=True)
        shared = model.decoder(memory, mem_mask, tokens, need_attention=True, image_index=image_index)
        one_image = model.decoder(memory[:1], mem_mask[:1], tokens, image_index=torch.zeros(5, dtype=torch.long))
        one_copied = model.decoder(memory[[0] * 5], mem_mask[[0] * 5], tokens)
    for a, b in zip(copied, shared):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(one_image[0], one_copied[0], atol=1e-5, rtol=1e-5)
