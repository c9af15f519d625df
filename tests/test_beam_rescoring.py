"""Rescoring only the hypotheses that can reach the top n gives the reference's top n."""

from __future__ import annotations

import pytest
import torch

from model.beam import _Found, _rescore, _search, _Trace, beam_search_memory
from model.hmer import direction_targets
from model.vocab import Vocabulary
from tests.helpers import random_tiny_encoding


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_n_equals_the_full_rescoring(seed):
    model, memory, mem_mask = random_tiny_encoding(seed)
    vocab = Vocabulary.default()
    with torch.no_grad():
        full = beam_search_memory(model, memory, mem_mask, vocab, beam_size=5, max_len=12)
        for n in (1, 3):
            top = beam_search_memory(model, memory, mem_mask, vocab, beam_size=5, max_len=12, nbest=n)
            for image in range(2):
                assert len(full[image]) > n  # otherwise the test proves nothing
                assert [h.ids for h in top[image]] == [h.ids for h in full[image][:n]]
                for a, b in zip(top[image], full[image]):
                    assert a.score == pytest.approx(b.score, abs=1e-5)


def _ending_encoding(seed):
    """A random tiny model whose readings end at several lengths (<eos> favoured): random
    weights alone rarely end one before max_len."""
    model, memory, mem_mask = random_tiny_encoding(seed)
    with torch.no_grad():
        model.decoder.head.bias[Vocabulary.default().eos_id] += 1.5
    return model, memory, mem_mask


def _teacher_forced(model, memory, mem_mask, image, ids, vocab):
    tgt, _ = direction_targets([list(ids)], vocab, reverse=False)
    main, aux, attn = model.decoder(memory[image : image + 1], mem_mask[image : image + 1], tgt, need_attention=True)
    return main[0], aux[0], attn[0].mean(dim=0)  # attention averaged over the heads


def _assert_same_outputs(got, want):
    for g, w in zip(got, want):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("seed", [0, 1])
def test_the_search_steps_give_each_finished_reading_its_teacher_forced_outputs(seed):
    # The beam reading's attention maps and probabilities come from the search's own steps,
    # followed back through every reorder: they must be what reading it again computes.
    model, memory, mem_mask = _ending_encoding(seed)
    vocab = Vocabulary.default()
    trace = _Trace()
    with torch.no_grad():
        groups = _search(model, memory, mem_mask, vocab, 5, 12, 1.0, False, trace=trace)
        checked = []
        for image in range(2):  # groups 0 and 1 search left to right
            for _, ids in groups[image].beams:
                outputs = trace.outputs(image, tuple(ids))
                assert outputs is not None
                _assert_same_outputs(outputs, _teacher_forced(model, memory, mem_mask, image, ids[1:], vocab))
                checked.append(len(ids) - 1)
    assert len(checked) == 10 and max(checked) >= 2  # readings that pass through reorders


@pytest.mark.parametrize("seed", [0, 1])
def test_the_rescoring_keeps_the_left_to_right_outputs_of_right_to_left_finds(seed):
    model, memory, mem_mask = _ending_encoding(seed)
    vocab = Vocabulary.default()
    with torch.no_grad():
        groups = _search(model, memory, mem_mask, vocab, 5, 12, 1.0, False)
        found = [_Found(image, "r2l", tuple(ids[1:][::-1]), score)
                 for image in range(2) for score, ids in groups[2 + image].beams]  # fmt: skip
        _rescore(model, memory, mem_mask, vocab, 1.0, found, keep_outputs=True)
        assert len(found) >= 5
        for f in found:
            _assert_same_outputs(f.outputs, _teacher_forced(model, memory, mem_mask, f.image, f.ids, vocab))


@pytest.mark.parametrize("seed", [0, 1])
def test_the_best_reading_carries_its_outputs_only_when_asked(seed):
    model, memory, mem_mask = _ending_encoding(seed)
    vocab = Vocabulary.default()
    with torch.no_grad():
        plain = beam_search_memory(model, memory, mem_mask, vocab, beam_size=5, max_len=12, nbest=3)
        explained = beam_search_memory(model, memory, mem_mask, vocab, beam_size=5, max_len=12, nbest=3, explain=True)
        for image in range(2):
            assert explained[image] == plain[image]  # the same readings and scores
            assert all(h.outputs is None for h in plain[image] + explained[image][1:])
            best = explained[image][0]
            assert best.outputs is not None
            _assert_same_outputs(best.outputs, _teacher_forced(model, memory, mem_mask, image, best.ids, vocab))
