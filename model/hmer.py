"""HMER-MTL: DenseNet encoder, ARM transformer decoder, main and structure heads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import HMERConfig
from model.decoder import Decoder
from model.encoder import Encoder
from model.vocab import Vocabulary


@dataclass
class Targets:
    """Teacher-forcing inputs and targets for both directions of a batch.

    Rows 0..b-1 read left-to-right (start <sos>, end <eos>), rows b..2b-1 read
    right-to-left (start <eos>, end <sos>); padding is 0.
    """

    tgt: Tensor  # [2b, t] decoder input
    out: Tensor  # [2b, t] main-task target
    aux_out: Tensor  # [2b, t] auxiliary (structure-only) target


def direction_targets(seqs: Sequence[Sequence[int]], vocab: Vocabulary, reverse: bool) -> tuple[Tensor, Tensor]:
    """Decoder input and target for one direction: [b, max_len+1] each."""
    start, stop = (vocab.eos_id, vocab.sos_id) if reverse else (vocab.sos_id, vocab.eos_id)
    length = max(len(s) for s in seqs) + 1
    tgt = torch.full((len(seqs), length), vocab.pad_id, dtype=torch.long)
    out = torch.full((len(seqs), length), vocab.pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        s = list(s)[::-1] if reverse else list(s)
        tgt[i, 0] = start
        tgt[i, 1 : 1 + len(s)] = torch.tensor(s, dtype=torch.long)
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        out[i, len(s)] = stop
    return tgt, out


def bidirectional_targets(seqs: Sequence[Sequence[int]], vocab: Vocabulary) -> Targets:
    l2r_tgt, l2r_out = direction_targets(seqs, vocab, reverse=False)
    r2l_tgt, r2l_out = direction_targets(seqs, vocab, reverse=True)
    out = torch.cat((l2r_out, r2l_out))
    structure = torch.tensor(vocab.structure_of, dtype=torch.long)
    return Targets(tgt=torch.cat((l2r_tgt, r2l_tgt)), out=out, aux_out=structure[out])


class HMER(nn.Module):
    def __init__(self, config: HMERConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def encode(self, imgs: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
        """imgs [b, 1, H, W] (ink bright on 0), masks [b, H, W] -> [b, h, w, d], [b, h, w]."""
        return self.encoder(imgs, masks)

    def forward(self, imgs: Tensor, masks: Tensor, tgt: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher-forced logits for bidirectional targets.

        imgs [b, 1, H, W]; masks [b, H, W]; tgt [2b, t] (l2r rows, then r2l rows).
        Returns (main_logits, aux_logits), each [2b, t, V].
        """
        memory, mem_mask = self.encode(imgs, masks)  # [b, h, w, d], [b, h, w]
        b = imgs.shape[0]
        image_index = torch.arange(b, device=tgt.device).repeat(tgt.shape[0] // b)  # [2b]: both directions
        main, aux, _ = self.decoder(memory, mem_mask, tgt, image_index=image_index)
        return main, aux

    def loss(
        self, main: Tensor, aux: Tensor, targets: Targets, label_smoothing: float = 0.0
    ) -> tuple[Tensor, dict[str, float]]:
        """lambda_main * CE(main) + lambda_aux * CE(aux), padding ignored.

        `label_smoothing` softens the main head's targets only: the structure head
        can only ever emit a handful of the vocabulary's ids, so spreading mass over
        all of them would teach it nothing.
        """
        v = main.shape[-1]
        main_loss = F.cross_entropy(
            main.reshape(-1, v).float(), targets.out.reshape(-1), ignore_index=0, label_smoothing=label_smoothing
        )
        aux_loss = F.cross_entropy(aux.reshape(-1, v).float(), targets.aux_out.reshape(-1), ignore_index=0)
        total = self.config.lambda_main * main_loss + self.config.lambda_aux * aux_loss
        return total, {"loss": float(total.detach()), "loss_main": float(main_loss.detach()),
                       "loss_aux": float(aux_loss.detach())}  # fmt: skip

