"""Transformer decoder with attention refinement, in two forms that agree exactly:

* `Decoder.forward` reads whole target sequences at once (training, rescoring);
* `Decoder.step` extends sequences by one token from a `DecoderState` cache
  (self-attention keys/values and running attention coverage), so beam search
  never re-decodes a prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.arm import AttentionRefinementModule
from model.config import HMERConfig
from model.dropout import Dropout, dropout


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
    kept per image, never per hypothesis.
    """

    memory_mask: Tensor  # [B, L] True = padding
    height: int  # rows of the encoder grid (L = height * width)
    image_index: Tensor  # [n] image of each sequence
    cross_kv: list[tuple[Tensor, Tensor]]  # per layer, [B, H, L, dh] each
    self_kv: list[tuple[Tensor, Tensor]]  # per layer, [n, H, t, dh] each
    cov_final: list[Tensor]  # per layer, [n, H, L]: sum of past refined attention
    cov_raw: list[Tensor]  # per layer, [n, H, L]: sum of past unrefined attention
    length: int = 0  # tokens consumed so far

    @property
    def padded(self) -> bool:
        return self._padded

    def __post_init__(self) -> None:
        self._padded = bool(self.memory_mask.any())

    def reorder(self, index: Tensor) -> None:
        """Keep sequences `index` (beam search survivors), in that order."""
        self.image_index = self.image_index[index]
        self.self_kv = [(k[index], v[index]) for k, v in self.self_kv]
        self.cov_final = [c[index] for c in self.cov_final]
        self.cov_raw = [c[index] for c in self.cov_raw]


def _cross_logits(q: Tensor, k: Tensor, image_index: Tensor) -> Tensor:
    """q [n, H, 1, dh] against per-image keys k [B, H, L, dh] -> [n, H, 1, L]."""
    if k.shape[0] == 1:  # one image (the app): all sequences share its keys, no copies
        return (q[:, :, 0].transpose(0, 1) @ k[0].transpose(-1, -2)).transpose(0, 1)[:, :, None]
    return q @ k[image_index].transpose(-1, -2)


def _cross_values(attn: Tensor, v: Tensor, image_index: Tensor) -> Tensor:
    """attn [n, H, 1, L] over per-image values v [B, H, L, dh] -> merged heads [n, 1, d]."""
    if v.shape[0] == 1:
        out = (attn[:, :, 0].transpose(0, 1) @ v[0]).transpose(0, 1)  # [n, H, dh]
    else:
        out = (attn @ v[image_index])[:, :, 0]
    return out.reshape(out.shape[0], 1, -1)


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
        self, memory: Tensor, memory_mask: Tensor, tokens: Tensor, need_attention: bool = False
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Teacher-forced decoding of whole sequences.

        memory: [b, h, w, d]; memory_mask: [b, h, w]; tokens: [b, t] (pad = 0).
        Returns main and auxiliary logits [b, t, V] and, if asked, the last
        layer's refined cross-attention [b, H, t, L].
        """
        b, height, width, d = memory.shape
        t = tokens.shape[1]
        mem = memory.reshape(b, height * width, d)  # [b, L, d]
        mem_mask = memory_mask.reshape(b, height * width)  # [b, L]
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
            k, v = mha.project_kv(mem)
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
        n = image_index.shape[0]
        empty = mem.new_zeros(n, self.nhead, 0, d // self.nhead)
        zeros = mem.new_zeros(n, self.nhead, height * width)
        return DecoderState(
            memory_mask=memory_mask.reshape(b, height * width),
            height=height,
            image_index=image_index,
            cross_kv=[layer.multihead_attn.project_kv(mem) for layer in self.layers],
            self_kv=[(empty, empty) for _ in self.layers],
            cov_final=[zeros for _ in self.layers],
            cov_raw=[zeros for _ in self.layers],
        )

    @torch.no_grad()
    def step(self, state: DecoderState, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Feed one token per sequence; returns main and auxiliary logits [n, V]
        and the last layer's refined attention [n, H, L]. Updates `state`."""
        x = self.embed(tokens[:, None], start=state.length)  # [n, 1, d]
        idx = state.image_index
        # Without padding (one image, as in the app) there is nothing to mask.
        seq_mask = state.memory_mask[idx] if state.padded else None  # [n, L]
        cross_mask = seq_mask[:, None, None, :] if seq_mask is not None else None  # [n, 1, 1, L]
        finals, raws = [], []
        attn = None
        for i, layer in enumerate(self.layers):
            k_new, v_new = layer.self_attn.project_kv(x)
            k_old, v_old = state.self_kv[i]
            k, v = torch.cat((k_old, k_new), dim=2), torch.cat((v_old, v_new), dim=2)
            state.self_kv[i] = (k, v)
            x = layer.self_block(x, k, v, None)
            mha = layer.multihead_attn
            q = mha.project_q(x)  # [n, H, 1, dh]
            ck, cv = state.cross_kv[i]
            logits = _cross_logits(q, ck, idx)  # [n, H, 1, L]
            raw = mha.probs(logits, cross_mask)
            attn = raw
            if i > 0 and self.arm is not None:
                prev_cov = state.cov_final[i - 1][:, :, None]  # [n, H, 1, L]
                curr_cov = state.cov_raw[i][:, :, None]
                logits = self._refine(logits, prev_cov, curr_cov, seq_mask, state.height)
                attn = mha.probs(logits, cross_mask)
            raws.append(raw[:, :, 0])
            finals.append(attn[:, :, 0])
            x = layer.norm2(x + layer.dropout(mha.out_proj(_cross_values(attn, cv, idx))))
            x = layer.feed_forward(x)
        state.cov_final = [c + a for c, a in zip(state.cov_final, finals)]
        state.cov_raw = [c + a for c, a in zip(state.cov_raw, raws)]
        state.length += 1
        x = x[:, 0]
        return self.head(x), self.aux_head(x), attn[:, :, 0]
