"""Greedy left-to-right decoding, batched and incremental (validation, live preview)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from model.cancel import ShouldStop, stop_if_asked
from model.hmer import HMER
from model.syntax import SyntaxRules
from model.vocab import Vocabulary


@torch.no_grad()
def greedy_search(
    model: HMER, imgs: Tensor, masks: Tensor, vocab: Vocabulary, max_len: int = 200, well_formed: bool = True
) -> list[tuple[list[int], float]]:
    """Most probable next token at each step, per image: (ids without <sos>/<eos>, sum log-prob).
    well_formed: the most probable token that keeps the reading within `SyntaxRules`."""
    memory, mem_mask = model.encode(imgs, masks)
    return greedy_search_memory(model, memory, mem_mask, vocab, max_len, well_formed=well_formed)


@torch.no_grad()
def greedy_search_memory(
    model: HMER, memory: Tensor, mem_mask: Tensor, vocab: Vocabulary, max_len: int = 200,
    on_step: Callable[[Tensor, Tensor, Tensor], None] | None = None, well_formed: bool = True,
    should_stop: ShouldStop | None = None,
) -> list[tuple[list[int], float]]:  # fmt: skip
    """`greedy_search` on images already encoded (memory [B, h, w, d], mask [B, h, w]).
    `on_step(logits, aux_logits, attention)` sees each step's outputs ([B, V], [B, V] and the
    last layer's refined attention [B, H, L]): what a teacher-forced pass over the reading
    would compute, without running it. should_stop is asked before each step (`model.cancel`)."""
    b = memory.shape[0]
    state = model.decoder.start(memory, mem_mask, torch.arange(b, device=memory.device))
    last = torch.full((b,), vocab.sos_id, dtype=torch.long, device=memory.device)
    out = torch.zeros(b, 0, dtype=torch.long, device=memory.device)
    logp = torch.zeros(b, device=memory.device)
    finished = torch.zeros(b, dtype=torch.bool, device=memory.device)
    rules = SyntaxRules(vocab, memory.device) if well_formed else None
    syntax = rules.start(torch.zeros(b, dtype=torch.bool, device=memory.device)) if rules else None
    for _ in range(max_len):
        stop_if_asked(should_stop)
        logits, aux, attn = model.decoder.step(state, last, need_aux=on_step is not None)
        if on_step is not None:
            on_step(logits, aux, attn)
        logp_all = torch.log_softmax(logits.float(), dim=-1)  # [B, V]
        if rules is not None:
            logp_all = rules.mask(syntax, last, logp_all)
        step_logp, last = logp_all.max(dim=-1)
        logp = logp + torch.where(finished, 0.0, step_logp)
        last = torch.where(finished, vocab.pad_id, last)
        out = torch.cat((out, last[:, None]), dim=1)
        if rules is not None:
            syntax = rules.advance(syntax, last)
        # any special token ends a reading, as in the beam search (and the reference's): a
        # weak model can rank <sos> first, which must not reach the LaTeX
        finished |= (last == vocab.eos_id) | (last == vocab.sos_id) | (last == vocab.pad_id)
        if bool(finished.all()):
            break
    results = []
    for row, score in zip(out.tolist(), logp.tolist()):
        ids = []
        for t in row:
            if t in (vocab.eos_id, vocab.sos_id, vocab.pad_id):
                break
            ids.append(t)
        results.append((ids, score))
    return results
