"""`hmer-train recalibrate-bn`: BatchNorm statistics measured anew for a checkpoint's own weights."""

from __future__ import annotations

import torch
from torch import nn

from model.arm import MaskedBatchNorm
from model.checkpoint import load_checkpoint
from model.config import HMERConfig
from model.hmer import HMER
from model.inkml import write_inkml
from model.recognizer import Recognizer
from model.vocab import Vocabulary
from tests.conftest import SYNTHETIC_EXPRESSIONS
from tests.helpers import synthetic_examples
from tests.synthetic_ink import ink_for
from train.data import InkDataset, collate
from train.recalibrate import recalibrate_batchnorm


def _batches(model: HMER) -> list:
    vocab = Vocabulary.default()
    ds = InkDataset(synthetic_examples(SYNTHETIC_EXPRESSIONS, copies=2), vocab, model.config.raster, None)
    return [collate([ds[i] for i in range(0, 5)], vocab), collate([ds[i] for i in range(5, 10)], vocab)]


def _corrupt(model: HMER) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean += 5.0
            m.running_var *= 10.0


def test_recalibration_measures_each_batchnorm_on_the_network_that_runs():
    torch.manual_seed(0)
    model = HMER(HMERConfig.tiny())
    batches = _batches(model)
    _corrupt(model)
    params = {k: v.clone() for k, v in model.named_parameters()}
    first = model.encoder.densenet.norm1
    batch_means = []
    hook = first.register_forward_hook(lambda m, inp, out: batch_means.append(inp[0].mean(dim=(0, 2, 3))))
    images = recalibrate_batchnorm(model, batches)
    hook.remove()
    assert images == 10 and not model.training
    # an equal-weight mean of what each batch fed it, not the corrupted value nor an EMA of it
    torch.testing.assert_close(first.running_mean, torch.stack(batch_means).mean(0))
    arm_norms = [m.bn for m in model.modules() if isinstance(m, MaskedBatchNorm)]
    assert arm_norms and all(int(bn.num_batches_tracked) == 2 and bn.running_mean.abs().max() < 5 for bn in arm_norms)
    assert all(torch.equal(v, params[k]) for k, v in model.named_parameters())  # weights untouched
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    # dropout was off: measuring again gives the same statistics
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    recalibrate_batchnorm(model, batches)
    for k, v in model.state_dict().items():
        if "running" in k:
            torch.testing.assert_close(v, stats[k])


def test_recalibrate_bn_command_repairs_a_checkpoint_whose_statistics_are_wrong(tmp_path, tiny_checkpoint):
    from model.checkpoint import save_checkpoint
    from train.cli import main as train_main

    data = tmp_path / "crohme"
    for i, latex in enumerate(SYNTHETIC_EXPRESSIONS * 2):
        write_inkml(data / "train" / f"e{i}.inkml", ink_for(latex, seed=i), f"${latex}$")
    model, vocab, meta = load_checkpoint(tiny_checkpoint)
    _corrupt(model)
    broken = tmp_path / "broken.pt"
    save_checkpoint(broken, model, vocab, meta)

    def readings(path) -> list[str]:
        recognizer = Recognizer.load(path, device="cpu")
        return [recognizer.recognize(ink_for(latex), beam_size=1).latex for latex in SYNTHETIC_EXPRESSIONS]

    intact = readings(tiny_checkpoint)
    assert sum(a == b for a, b in zip(intact, SYNTHETIC_EXPRESSIONS)) >= 4
    assert readings(broken) != intact  # the wrong statistics break the tiny model
    out = tmp_path / "fixed.pt"
    assert train_main(["recalibrate-bn", str(broken), str(out), "--data", str(data), "--no-augment"]) == 0
    assert readings(out) == intact
    assert load_checkpoint(out)[2]["bn_recalibrated"]["images"] > 0
    assert train_main(["recalibrate-bn", str(broken), str(out), "--data", str(tmp_path / "none")]) == 2
