"""Rescoring only the hypotheses that can reach the top n gives the reference's top n."""

from __future__ import annotations

import pytest
import torch

from model.beam import beam_search_memory
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
