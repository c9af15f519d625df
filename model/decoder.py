"""Transformer decoder with attention refinement, in two forms that agree exactly:

* `Decoder.forward` reads whole target sequences at once (training, rescoring);
* `Decoder.step` extends sequences by one token from a `DecoderState` cache
  (self-attention keys/values and running attention coverage), so beam search
  never re-decodes a prefix.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.arm import AttentionRefinementModule
from model.config import HMERConfig
from model.dropout import Dropout, dropout

log = logging.getLogger(__name__)


class WordPositionalEncoding(nn.Module):
    """1-D sine encoding, interleaved sin/cos."""

    def __init__(self, d_model: int, max_len: int, temperature: float = 10000.0) -> None:
        super().__init__()
        position = torch.arange(max_len, dtype=torch.float)
        dim_t = torch.arange(0, d_model, 2, dtype=torch.float)
        angles = position[:, None] * (1.0 / (temperature ** (dim_t / d_model)))  # [max_len, d/2]
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2] = angles.sin()
        pe[:, 1::2] = angles.cos()
        self.register_buffer("pe", pe, persistent=False)

    def forward(self, x: Tensor, start: int = 0) -> Tensor:
        # x: [b, t, d], positions start .. start+t-1
        return x + self.pe[start : start + x.shape[1]].to(x.dtype)


class MultiheadAttention(nn.Module):
    """Multi-head attention with the reference's parameter layout (packed q/k/v)."""

    def __init__(self, d_model: int, nhead: int, dropout: float) -> None:
        super().__init__()
        self.nhead = nhead
        self.head_dim = d_model // nhead
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model)
        self.dropout = dropout
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def _heads(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.nhead, self.head_dim).transpose(1, 2)  # [b, H, t, dh]

    def project_q(self, x: Tensor) -> Tensor:
        d = x.shape[-1]
        q = F.linear(x, self.in_proj_weight[:d], self.in_proj_bias[:d])
        return self._heads(q) * (self.head_dim**-0.5)  # [b, H, t, dh]

    def project_kv(self, x: Tensor) -> tuple[Tensor, Tensor]:
        d = x.shape[-1]
        kv = F.linear(x, self.in_proj_weight[d:], self.in_proj_bias[d:])
        k, v = kv.chunk(2, dim=-1)
        return self._heads(k), self._heads(v)  # [b, H, s, dh] each

    def merge(self, attn: Tensor, v: Tensor) -> Tensor:
        out = attn @ v  # [b, H, t, dh]
        b, _, t, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, t, -1))  # [b, t, d]

    def probs(self, logits: Tensor, mask: Tensor | None) -> Tensor:
        if mask is not None:
            logits = logits.masked_fill(mask, float("-inf"))
        attn = torch.softmax(logits, dim=-1)
        return dropout(attn, self.dropout, self.training)


class DecoderLayer(nn.Module):
    """Post-norm transformer decoder layer (self-attention, cross-attention, FFN)."""

    def __init__(self, config: HMERConfig) -> None:
        super().__init__()
        d = config.d_model
        self.self_attn = MultiheadAttention(d, config.nhead, config.dropout)
        self.multihead_attn = MultiheadAttention(d, config.nhead, config.dropout)
        self.linear1 = nn.Linear(d, config.dim_feedforward)
        self.linear2 = nn.Linear(config.dim_feedforward, d)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)
        self.norm3 = nn.LayerNorm(d)
        self.dropout = Dropout(config.dropout)

    def feed_forward(self, x: Tensor) -> Tensor:
        ff = self.linear2(self.dropout(F.relu(self.linear1(x))))
        return self.norm3(x + self.dropout(ff))

    def self_block(self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        q = self.self_attn.project_q(x)
        attn = self.self_attn.probs(q @ k.transpose(-1, -2), mask)
        return self.norm1(x + self.dropout(self.self_attn.merge(attn, v)))


@dataclass
class DecoderState:
    """What `Decoder.step` needs to extend n sequences by one token.

    Sequence i reads the image `image_index[i]`; cross-attention keys/values are
    kept per image, never per hypothesis. The self-attention cache and the coverage
    of all layers are one tensor each, so a beam-search reorder is three gathers
    (with the image index) whatever the depth.

    Beam search keeps several children of one parent. Their coverage is the
    parent's until they run a step, so a reorder keeps one coverage row per parent
    (`coverage_rows` maps sequences to rows) and the ARM runs once per parent.
    """

    memory_mask: Tensor | None  # [B, L] True = padding; None when nothing is padded
    height: int  # rows of the encoder grid (L = height * width)
    image_index: Tensor  # [n] image of each sequence
    cross_k: Tensor  # [layers, B, H, dh, L] keys, transposed for q @ k
    cross_v: Tensor  # [layers, B, H, L, dh]
    self_kv: Tensor  # [n, layers, 2, H, capacity, dh]; positions < length are filled
    coverage: Tensor  # [rows, 2, layers, H, L]: sums of past refined (0) and raw (1) attention
    coverage_rows: Tensor | None = None  # [n] coverage row of each sequence; None: row i is sequence i
    length: int = 0  # tokens consumed so far

    def reorder(self, index: Tensor) -> None:
        """Keep sequences `index` (beam search survivors), in that order."""
        self.image_index = self.image_index.index_select(0, index)
        self.self_kv = self.self_kv.index_select(0, index)
        rows = index if self.coverage_rows is None else self.coverage_rows.index_select(0, index)
        if self.memory_mask is None:  # share rows (with padding, a row would also need its own mask)
            parents, self.coverage_rows = torch.unique(rows, return_inverse=True)
            self.coverage = self.coverage.index_select(0, parents)
        else:
            self.coverage = self.coverage.index_select(0, rows)
            self.coverage_rows = None

    def sequence_coverage(self) -> Tensor:
        """Coverage per sequence: [n, 2, layers, H, L]."""
        return self.coverage if self.coverage_rows is None else self.coverage.index_select(0, self.coverage_rows)

    def grow(self, slots: int = 8) -> None:
        """Make room for one more position in the self-attention cache. It grows by a
        few slots at a time, not by doubling: every reorder copies the whole cache."""
        if self.length < self.self_kv.shape[4]:
            return
        old = self.self_kv
        shape = list(old.shape)
        shape[4] += slots
        self.self_kv = old.new_zeros(shape)
        self.self_kv[:, :, :, :, : old.shape[4]] = old


def _per_sequence(x: Tensor, image_index: Tensor) -> Tensor:
    """Per-image tensor [B, ...] -> per-sequence [n, ...]."""
    return x if x.shape[0] == 1 and image_index.shape[0] == 1 else x[image_index]


def _per_image_matmul(a: Tensor, b: Tensor, image_index: Tensor) -> Tensor:
    """a [n, H, r] @ per-image b [B, H, r, c] -> [n, H, c], sequence i using image_index[i].
    With one image (the app) all sequences share b: one batched matmul over heads, no copies."""
    if b.shape[0] == 1:
        return (a.transpose(0, 1) @ b[0]).transpose(0, 1)  # [H, n, r] @ [H, r, c] -> [n, H, c]
    return (a[:, :, None] @ b[image_index])[:, :, 0]


class Decoder(nn.Module):
    def __init__(self, config: HMERConfig) -> None:
        super().__init__()
        d = config.d_model
        self.nhead = config.nhead
        self.word_embed = nn.Sequential(nn.Embedding(config.vocab_size, d), nn.LayerNorm(d))
        self.pos_enc = WordPositionalEncoding(d, config.max_len)
        self.norm = nn.LayerNorm(d)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_decoder_layers))
        self.arm = AttentionRefinementModule(config) if (config.cross_coverage or config.self_coverage) else None
        self.head = nn.Linear(d, config.vocab_size)  # main task: next token
        self.aux_head = nn.Linear(d, config.vocab_size)  # auxiliary task: its structure form
        # `model.compiled_step.CompiledStep` and `CompiledForward`, set by the recognizer when
        # compiled packages are ready: `step` and evaluation's `forward` run through them where
        # they fit, else eagerly.
        self.compiled_step: Any = None
        self.compiled_forward: Any = None

    def embed(self, tokens: Tensor, start: int = 0) -> Tensor:
        return self.norm(self.pos_enc(self.word_embed(tokens), start))  # [b, t, d]

    def _refine(self, logits: Tensor, prev: Tensor, curr: Tensor, mask: Tensor | None, height: int) -> Tensor:
        """Subtract the ARM's coverage penalty from cross-attention logits.

        logits: [n, H, t, L]; prev/curr: [n, H, t, L] coverage (attention summed
        over earlier steps); mask: [n, L].
        """
        n, heads, t, length = logits.shape
        width = length // height
        cov = self.arm.coverage_input(prev, curr)  # [n, k*H, t, L]
        cov = cov.transpose(1, 2).reshape(n * t, -1, height, width)  # [(n t), k*H, h, w]
        grid_mask = None
        if mask is not None:
            grid_mask = mask.view(n, 1, 1, height, width).expand(n, t, 1, height, width).reshape(n * t, 1, height, width)
        penalty = self.arm(cov, grid_mask)  # [(n t), H, h, w]
        penalty = penalty.view(n, t, heads, length).transpose(1, 2)  # [n, H, t, L]
        return logits - penalty

    def forward(
        self, memory: Tensor, memory_mask: Tensor, tokens: Tensor, need_attention: bool = False,
        image_index: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:  # fmt: skip
        """Teacher-forced decoding of whole sequences.

        memory: [B, h, w, d]; memory_mask: [B, h, w]; tokens: [b, t] (pad = 0);
        image_index: [b], the image each sequence reads (None: sequence i reads
        image i). Several sequences of one image share its cross-attention keys and
        values, which are projected once per image.
        Returns main and auxiliary logits [b, t, V] and, if asked, the last
        layer's refined cross-attention [b, H, t, L].
        """
        fast = self.compiled_forward
        usable = fast is not None and not self.training and not torch.is_grad_enabled()
        if usable and fast.fits(memory, memory_mask, tokens, image_index):
            try:
                main, aux, attn = fast.forward(memory, memory_mask, tokens)
                return main, aux, (attn if need_attention else None)
            except Exception as e:  # noqa: BLE001 (as in `step`: run eagerly from now on)
                log.warning("the compiled decoder pass failed, running eagerly: %s: %s", type(e).__name__, e)
                self.compiled_forward = None
        images, height, width, d = memory.shape
        b, t = tokens.shape
        mem = memory.reshape(images, height * width, d)  # [B, L, d]
        mem_mask = memory_mask.reshape(images, height * width)  # [B, L]
        if image_index is not None:
            mem_mask = mem_mask[image_index]  # [b, L]
        causal = torch.ones(t, t, dtype=torch.bool, device=tokens.device).triu_(1)
        self_mask = causal[None, None] | (tokens == 0)[:, None, None, :]  # [b, 1, t, t]
        cross_mask = mem_mask[:, None, None, :]  # [b, 1, 1, L]

        x = self.embed(tokens)
        prev_attn: Tensor | None = None
        attn = None
        for i, layer in enumerate(self.layers):
            k, v = layer.self_attn.project_kv(x)
            x = layer.self_block(x, k, v, self_mask)
            mha = layer.multihead_attn
            q = mha.project_q(x)
            k, v = mha.project_kv(mem)  # [B, H, L, dh]
            if image_index is not None:
                k, v = (k, v) if images == 1 else (k[image_index], v[image_index])  # one image broadcasts
            logits = q @ k.transpose(-1, -2)  # [b, H, t, L]
            attn = mha.probs(logits, cross_mask)
            if i > 0 and self.arm is not None:
                # coverage = attention summed over the earlier steps (cumsum minus self)
                prev_cov = prev_attn.cumsum(dim=2) - prev_attn
                curr_cov = attn.cumsum(dim=2) - attn
                logits = self._refine(logits, prev_cov, curr_cov, mem_mask, height)
                attn = mha.probs(logits, cross_mask)
            x = layer.norm2(x + layer.dropout(mha.merge(attn, v)))
            x = layer.feed_forward(x)
            prev_attn = attn
        return self.head(x), self.aux_head(x), (attn if need_attention else None)

    @torch.no_grad()
    def start(self, memory: Tensor, memory_mask: Tensor, image_index: Tensor) -> DecoderState:
        """An empty cache for sequences reading images `image_index` of `memory`."""
        b, height, width, d = memory.shape
        mem = memory.reshape(b, height * width, d)
        n, layers = image_index.shape[0], len(self.layers)
        keys, values = zip(*(layer.multihead_attn.project_kv(mem) for layer in self.layers))  # [B, H, L, dh] each
        mask = memory_mask.reshape(b, height * width)
        return DecoderState(
            memory_mask=mask if bool(mask.any()) else None,
            height=height,
            image_index=image_index,
            cross_k=torch.stack(keys).transpose(-1, -2).contiguous(),
            cross_v=torch.stack(values),
            self_kv=mem.new_zeros(n, layers, 2, self.nhead, 8, d // self.nhead),
            coverage=mem.new_zeros(n, 2, layers, self.nhead, height * width),
        )

    def _step_penalties(self, state: DecoderState) -> Tensor:
        """The ARM's penalty for every layer after the first, all in one call: it reads
        only coverage of earlier steps, which is known before this step runs.
        Returns [n, layers-1, H, L]."""
        cov = state.coverage  # [rows, 2, layers, H, L]; one row per sequence when padded
        n, _, layers, heads, length = cov.shape
        # layer i reads the refined coverage of layer i-1 and the raw coverage of itself
        arm_in = self.arm.coverage_input(cov[:, 0, :-1], cov[:, 1, 1:], dim=2)  # [n, layers-1, k*H, L]
        arm_in = arm_in.reshape(n * (layers - 1), -1, state.height, length // state.height)
        mask = None
        if state.memory_mask is not None:
            mask = _per_sequence(state.memory_mask, state.image_index)  # [n, L]
            mask = mask.view(n, 1, 1, state.height, -1).expand(n, layers - 1, 1, state.height, -1)
            mask = mask.reshape(n * (layers - 1), 1, state.height, -1)
        penalties = self.arm(arm_in, mask).view(n, layers - 1, heads, length)
        return penalties if state.coverage_rows is None else penalties.index_select(0, state.coverage_rows)

    @torch.no_grad()
    def step(self, state: DecoderState, tokens: Tensor, need_aux: bool = True) -> tuple[Tensor, Tensor | None, Tensor]:
        """Feed one token per sequence; returns main logits [n, V], auxiliary logits
        [n, V] (None unless `need_aux`) and the last layer's refined attention
        [n, H, L]. Updates `state`. Runs the model in evaluation mode only."""
        if self.training:
            raise RuntimeError("Decoder.step is for inference: call model.eval() first")
        n, t = tokens.shape[0], state.length
        state.grow()
        fast = self.compiled_step
        if fast is not None and fast.fits(state, n):
            try:
                return fast.step(state, tokens, need_aux)
            except Exception as e:  # noqa: BLE001 (never lose a recognition to it: run eagerly from now on)
                log.warning("the compiled decoder step failed, running eagerly: %s: %s", type(e).__name__, e)
                self.compiled_step = None
        x = self.embed(tokens[:, None], start=t)[:, 0]  # [n, d]
        idx = state.image_index
        mask = _per_sequence(state.memory_mask, idx)[:, None] if state.memory_mask is not None else None  # [n, 1, L]
        penalties = self._step_penalties(state) if self.arm is not None else None  # [n, layers-1, H, L]
        heads, dh = self.nhead, x.shape[-1] // self.nhead
        attn_sums = []
        for i, layer in enumerate(self.layers):
            # self-attention over the cached prefix and this token
            sa = layer.self_attn
            qkv = F.linear(x, sa.in_proj_weight, sa.in_proj_bias).view(n, 3, heads, dh)  # [n, 3, H, dh]
            state.self_kv[:, i, :, :, t] = qkv[:, 1:]
            k, v = state.self_kv[:, i, 0, :, : t + 1], state.self_kv[:, i, 1, :, : t + 1]  # [n, H, t+1, dh]
            out = F.scaled_dot_product_attention(qkv[:, 0, :, None], k, v)  # [n, H, 1, dh]
            x = layer.norm1(x + sa.out_proj(out.reshape(n, -1)))
            # cross-attention, refined by the coverage penalty after the first layer
            mha = layer.multihead_attn
            d = x.shape[-1]
            q = F.linear(x, mha.in_proj_weight[:d], mha.in_proj_bias[:d]).view(n, heads, dh) * dh**-0.5
            logits = _per_image_matmul(q, state.cross_k[i], idx)  # [n, H, L]
            if mask is not None:
                logits = logits.masked_fill(mask, float("-inf"))
            raw = torch.softmax(logits, dim=-1)
            attn = raw
            if penalties is not None and i > 0:
                attn = torch.softmax(logits - penalties[:, i - 1], dim=-1)
            attn_sums.append(attn)
            attn_sums.append(raw)
            ctx = _per_image_matmul(attn, state.cross_v[i], idx)  # [n, H, dh]
            x = layer.norm2(x + mha.out_proj(ctx.reshape(n, -1)))
            x = layer.feed_forward(x)
        layers = len(self.layers)
        state.coverage = state.sequence_coverage() + torch.stack(attn_sums, dim=1).view(n, layers, 2, heads, -1).transpose(1, 2)
        state.coverage_rows = None
        state.length += 1
        return self.head(x), (self.aux_head(x) if need_aux else None), attn
