"""Our HMER-MTL computes what the published implementation computes."""

from __future__ import annotations

import re

import pytest
import torch

from model.beam import beam_search
from model.checkpoint import CheckpointError, from_reference, reference_key_to_ours
from model.config import HMERConfig
from model.hmer import HMER, bidirectional_targets
from tests.conftest import SHARED


def test_paper_preset_has_exactly_the_published_parameter_count():
    assert HMER(HMERConfig.paper()).num_parameters() == 6_420_024


def test_every_reference_paper_key_maps_onto_our_model_with_its_shape():
    keys_file = SHARED / "reference" / "hmer_mtl_paper_state_dict_keys.txt"
    if not keys_file.exists():
        pytest.skip("reference key list not present")
    ours = {k: tuple(v.shape) for k, v in HMER(HMERConfig.paper()).state_dict().items()}
    seen = set()
    for line in keys_file.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape = line.split("\t")
        shape = tuple(int(x) for x in re.findall(r"\d+", shape))
        mapped = reference_key_to_ours(key)
        if mapped == "decoder.pos_enc.pe":
            continue  # a fixed sine table, computed rather than stored
        assert mapped in ours, f"{key} -> {mapped} missing from our model"
        assert ours[mapped] == shape, f"{key}: reference {shape}, ours {ours[mapped]}"
        seen.add(mapped)
    assert seen == set(ours)


def test_logits_equal_the_reference_fixture(reference_fixture):
    model, vocab = from_reference(reference_fixture["checkpoint"])
    assert list(vocab.tokens) == reference_fixture["vocab"]
    model.eval()
    with torch.no_grad():
        main, aux = model(reference_fixture["imgs"], reference_fixture["masks"], reference_fixture["bi_tgt"])
    assert main.shape == reference_fixture["exp_logits"].shape
    assert torch.allclose(main, reference_fixture["exp_logits"], atol=1e-4, rtol=0)
    assert torch.allclose(aux, reference_fixture["imp_logits"], atol=1e-4, rtol=0)


def test_targets_equal_the_reference_fixture(reference_fixture):
    _, vocab = from_reference(reference_fixture["checkpoint"])
    targets = bidirectional_targets(reference_fixture["seqs"], vocab)
    assert torch.equal(targets.tgt, reference_fixture["bi_tgt"])
    assert torch.equal(targets.out, reference_fixture["bi_out"])
    assert torch.equal(targets.aux_out, reference_fixture["imp_out_target"])


def test_beam_search_equals_the_reference_fixture(reference_fixture):
    model, vocab = from_reference(reference_fixture["checkpoint"])
    model.eval()
    results = beam_search(model, reference_fixture["imgs"], reference_fixture["masks"], vocab,
                          beam_size=10, max_len=30, alpha=1.0, well_formed=False)  # fmt: skip
    for hyps, expected in zip(results, reference_fixture["beam_best"]):
        assert list(hyps[0].ids) == expected["seq"]
        assert hyps[0].score == pytest.approx(expected["score"], abs=1e-4)


def test_from_reference_rejects_a_checkpoint_of_another_layout():
    with pytest.raises(CheckpointError, match="state_dict"):
        from_reference({"weights": {}})
