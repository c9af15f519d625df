"""Beam pruning: fewer rows to decode when one reading dominates, the same reading."""

from __future__ import annotations

import types

import pytest
import torch

from model.beam import beam_search_memory
from model.vocab import Vocabulary
from tests.helpers import random_tiny_encoding

VOCAB = Vocabulary.default()


class _ConfidentDecoder:
    """Every row of both directions reads `x` with a wide margin for three steps, then
    stops; teacher forcing (the rescoring) says the same. Records the rows of each step."""

    margin = 8.0

    def __init__(self) -> None:
        self.rows: list[int] = []

    def _logits(self, position: int) -> torch.Tensor:
        logits = torch.zeros(len(VOCAB))
        logits[VOCAB.tokens.index("x") if position < 3 else VOCAB.eos_id] = self.margin
        return logits

    def start(self, *args):
        return types.SimpleNamespace(reorder=lambda index: None)

    def step(self, state, last, need_aux):
        self.rows.append(len(last))
        return self._logits(len(self.rows) - 1).expand(len(last), -1), None, None

    def __call__(self, memory, mem_mask, tgt, image_index):
        logits = torch.stack([self._logits(p) for p in range(tgt.shape[1])])  # [t, V]
        return logits.expand(tgt.shape[0], -1, -1), None, None


def _search(decoder: _ConfidentDecoder, prune: float | None):
    model = types.SimpleNamespace(decoder=decoder)
    memory, mask = torch.zeros(1, 1, 1, 4), torch.zeros(1, 1, 1, dtype=torch.bool)
    return beam_search_memory(model, memory, mask, VOCAB, beam_size=5, max_len=10, nbest=3, prune=prune)[0]


def test_pruning_drops_the_beams_a_confident_reading_leaves_far_behind():
    exact, pruned = _ConfidentDecoder(), _ConfidentDecoder()
    full = _search(exact, None)
    fast = _search(pruned, 4.0)
    assert VOCAB.decode(full[0].ids) == VOCAB.decode(fast[0].ids) == ["x", "x", "x"]
    assert fast[0].score == pytest.approx(full[0].score)
    # Both directions (2 rows) at the first step; then every alternative trails by 8 nats
    # and only each direction's best beam is decoded, where the exact search keeps 5.
    assert exact.rows[1:] == [10] * (len(exact.rows) - 1)
    assert pruned.rows == [2] * len(pruned.rows)


class _CountingDecoder:
    """The model's incremental decoder, counting the rows each search step decodes."""

    def __init__(self, decoder) -> None:
        self.decoder = decoder
        self.rows = 0

    def start(self, *args):
        return self.decoder.start(*args)

    def step(self, state, tokens, need_aux):
        self.rows += len(tokens)
        return self.decoder.step(state, tokens, need_aux=need_aux)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_threshold_no_beam_reaches_is_the_exact_search(seed):
    model, memory, mem_mask = random_tiny_encoding(seed)
    exact, wide, tight = (_CountingDecoder(model.decoder) for _ in range(3))
    with torch.no_grad():
        full = beam_search_memory(model, memory, mem_mask, VOCAB, beam_size=5, max_len=12, decoder=exact)
        same = beam_search_memory(model, memory, mem_mask, VOCAB, beam_size=5, max_len=12, decoder=wide, prune=1e6)
        fast = beam_search_memory(model, memory, mem_mask, VOCAB, beam_size=5, max_len=12, decoder=tight, prune=0.5)
    for image in range(2):
        assert [(h.ids, h.direction) for h in same[image]] == [(h.ids, h.direction) for h in full[image]]
        assert [h.score for h in same[image]] == pytest.approx([h.score for h in full[image]])
        assert fast[image]  # a tight threshold still reads something
    # the same work too; a random model's candidates lie close together, so a tight threshold
    # saves little here (the confident decoder above shows the saving)
    assert wide.rows == exact.rows and tight.rows <= exact.rows
