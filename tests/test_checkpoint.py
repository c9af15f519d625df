from __future__ import annotations

import pytest
import torch

from model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from model.config import HMERConfig
from model.hmer import HMER
from model.vocab import Vocabulary


def _model() -> HMER:
    torch.manual_seed(1)
    return HMER(HMERConfig.tiny()).eval()


def _outputs(model: HMER) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(2)
    imgs = torch.rand(1, 1, 32, 48)
    with torch.no_grad():
        return model(imgs, torch.zeros(1, 32, 48, dtype=torch.bool), torch.tensor([[1, 10, 20], [2, 20, 10]]))


def test_round_trip_gives_the_same_model_outputs_and_metadata(tmp_path):
    model, vocab = _model(), Vocabulary.default()
    save_checkpoint(tmp_path / "m.pt", model, vocab, {"step": 12})
    loaded, loaded_vocab, meta = load_checkpoint(tmp_path / "m.pt")
    assert loaded_vocab == vocab and meta["step"] == 12 and loaded.config == model.config
    for a, b in zip(_outputs(model), _outputs(loaded.eval())):
        assert torch.equal(a, b)


def test_half_precision_checkpoint_is_smaller_and_close(tmp_path):
    model, vocab = _model(), Vocabulary.default()
    save_checkpoint(tmp_path / "full.pt", model, vocab)
    save_checkpoint(tmp_path / "half.pt", model, vocab, half=True)
    assert (tmp_path / "half.pt").stat().st_size < 0.7 * (tmp_path / "full.pt").stat().st_size
    loaded, _, _ = load_checkpoint(tmp_path / "half.pt")
    for a, b in zip(_outputs(model), _outputs(loaded.eval())):
        torch.testing.assert_close(a, b, atol=5e-2, rtol=5e-2)


def test_missing_empty_corrupt_and_truncated_files_say_which(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(tmp_path / "empty.pt")
    (tmp_path / "junk.pt").write_bytes(b"this is not a checkpoint" * 100)
    with pytest.raises(CheckpointError, match="corrupt|cannot be read"):
        load_checkpoint(tmp_path / "junk.pt")
    save_checkpoint(tmp_path / "good.pt", _model(), Vocabulary.default())
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt|truncated"):
        load_checkpoint(tmp_path / "cut.pt")


def test_a_file_of_another_kind_is_refused(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an hmer checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    save_checkpoint(tmp_path / "v.pt", _model(), Vocabulary.default())
    ckpt = torch.load(tmp_path / "v.pt", weights_only=True)
    ckpt["format_version"] = 99
    torch.save(ckpt, tmp_path / "v99.pt")
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(tmp_path / "v99.pt")


def test_another_vocabulary_or_config_is_named(tmp_path):
    vocab = Vocabulary.default()
    save_checkpoint(tmp_path / "m.pt", _model(), vocab)
    swapped = list(vocab.tokens)
    swapped[10], swapped[11] = swapped[11], swapped[10]
    with pytest.raises(CheckpointError, match="another vocabulary"):
        load_checkpoint(tmp_path / "m.pt", expect_vocab=Vocabulary(swapped))
    with pytest.raises(CheckpointError, match="another model config.*d_model"):
        load_checkpoint(tmp_path / "m.pt", expect_config=HMERConfig.tiny().replace(d_model=64))


def test_weights_that_do_not_fit_their_config_are_refused(tmp_path):
    save_checkpoint(tmp_path / "m.pt", _model(), Vocabulary.default())
    ckpt = torch.load(tmp_path / "m.pt", weights_only=True)
    ckpt["config"]["d_model"] = 64
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="weights do not fit|does not match"):
        load_checkpoint(tmp_path / "bad.pt")


def test_a_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    save_checkpoint(path, _model(), Vocabulary.default(), {"step": 1})

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(path, _model(), Vocabulary.default(), {"step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)[2]["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary file left behind


def test_export_writes_a_half_precision_file_the_app_loads(tmp_path, capsys):
    from train.cli import main as train_main

    model, vocab = _model(), Vocabulary.default()
    save_checkpoint(tmp_path / "best.pt", model, vocab, {"step": 40, "train_config": {"big": "dict"}})
    assert train_main(["export", str(tmp_path / "best.pt"), str(tmp_path / "ship.pt")]) == 0
    loaded, _, meta = load_checkpoint(tmp_path / "ship.pt")
    assert meta["step"] == 40 and meta["weights_dtype"] == "float16" and "train_config" not in meta
    for a, b in zip(_outputs(model), _outputs(loaded.eval())):
        torch.testing.assert_close(a, b, atol=5e-2, rtol=5e-2)
    assert train_main(["export", str(tmp_path / "missing.pt"), str(tmp_path / "x.pt")]) == 2
    assert "not found" in capsys.readouterr().err and not (tmp_path / "x.pt").exists()


def test_average_writes_the_mean_of_the_weights_and_refuses_another_model(tmp_path, capsys):
    from train.cli import main as train_main

    vocab = Vocabulary.default()
    a = _model()
    torch.manual_seed(5)
    b = HMER(HMERConfig.tiny()).eval()
    for m in (a, b):  # distinct BatchNorm statistics too
        for buf in m.buffers():
            if buf.is_floating_point():
                buf.uniform_(0.5, 1.5)
    save_checkpoint(tmp_path / "a.pt", a, vocab, {"step": 10, "val_split": "2014"})
    save_checkpoint(tmp_path / "b.pt", b, vocab, {"step": 20, "val_split": "2014"})
    out = tmp_path / "avg.pt"
    assert train_main(["average", str(out), str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "--fp32"]) == 0
    avg, _, meta = load_checkpoint(out)
    assert meta["averaged_from"] == [str(tmp_path / "a.pt"), str(tmp_path / "b.pt")]
    # the mean is not the first source's step 10: only what both share is its own
    assert "step" not in meta and meta["val_split"] == "2014"
    assert [m["step"] for m in meta["sources"]] == [10, 20]
    sa, sb, sm = a.state_dict(), b.state_dict(), avg.state_dict()
    floats = [k for k in sm if sm[k].is_floating_point()]
    assert any(not torch.equal(sa[k], sb[k]) for k in floats)
    for k in floats:
        torch.testing.assert_close(sm[k], (sa[k] + sb[k]) / 2)

    other = HMER(HMERConfig.tiny().replace(d_model=48, dim_feedforward=96))
    save_checkpoint(tmp_path / "other.pt", other, vocab)
    capsys.readouterr()
    bad = tmp_path / "bad.pt"
    assert train_main(["average", str(bad), str(tmp_path / "a.pt"), str(tmp_path / "other.pt")]) == 2
    assert "another model config" in capsys.readouterr().err and not bad.exists()
    assert train_main(["average", str(bad), str(tmp_path / "a.pt")]) == 2
    assert "at least two" in capsys.readouterr().err and not bad.exists()
