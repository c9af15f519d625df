"""Greedy left-to-right decoding, batched and incremental (validation, live preview)."""

from __future__ import annotations

import torch
from torch import Tensor

from model.hmer import HMER
from model.vocab import Vocabulary


@torch.no_grad()
def greedy_search(
    model: HMER, imgs: Tensor, masks: Tensor, vocab: Vocabulary, max_len: int = 200
) -> list[tuple[list[int], float]]:
    """Most probable next token at each step, per image: (ids without <sos>/<eos>, sum log-prob)."""
    memory, mem_mask = model.encode(imgs, masks)
    return greedy_search_memory(model, memory, mem_mask, vocab, max_len)


@torch.no_grad()
def greedy_search_memory(
    model: HMER, memory: Tensor, mem_mask: Tensor, vocab: Vocabulary, max_len: int = 200
) -> list[tuple[list[int], float]]:
    """`greedy_search` on images already encoded (memory [B, h, w, d], mask [B, h, w]), for a
    caller that needs the encoding for something else too (the app's attention maps)."""
    b = memory.shape[0]
    state = model.decoder.start(memory, mem_mask, torch.arange(b, device=memory.device))
    last = torch.full((b,), vocab.sos_id, dtype=torch.long, device=memory.device)
    out = torch.zeros(b, 0, dtype=torch.long, device=memory.device)
    logp = torch.zeros(b, device=memory.device)
    finished = torch.zeros(b, dtype=torch.bool, device=memory.device)
    for _ in range(max_len):
        logits, _, _ = model.decoder.step(state, last, need_aux=False)
        step_logp, last = torch.log_softmax(logits.float(), dim=-1).max(dim=-1)
        logp = logp + torch.where(finished, 0.0, step_logp)
        last = torch.where(finished, vocab.pad_id, last)
        out = torch.cat((out, last[:, None]), dim=1)
        finished |= last == vocab.eos_id
        if bool(finished.all()):
            break
    results = []
    for row, score in zip(out.tolist(), logp.tolist()):
        ids = []
        for t in row:
            if t in (vocab.eos_id, vocab.pad_id):
                break
            ids.append(t)
        results.append((ids, score))
    return results
