"""A tiny model trained on synthetic ink: the inference API returns its exact LaTeX and explains it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from model.checkpoint import CheckpointError
from model.image_input import image_to_input
from model.inkml import write_inkml
from model.rasterize import InkError, rasterize
from model.recognizer import Recognizer
from model.replacements import token_replacements
from tests.conftest import REPO, SYNTHETIC_EXPRESSIONS
from tests.synthetic_ink import ink_for


@pytest.fixture(scope="module")
def recognizer(tiny_checkpoint) -> Recognizer:
    return Recognizer.load(tiny_checkpoint, device="cpu")


@pytest.mark.parametrize("latex", SYNTHETIC_EXPRESSIONS)
def test_recognizes_the_expressions_it_learned(recognizer, latex):
    pred = recognizer.recognize(ink_for(latex, size=37.0), beam_size=5)
    assert pred.latex == latex
    n = len(pred.tokens)
    h, w = pred.image.shape
    assert pred.attention.shape == (n, -(-h // 16), -(-w // 16))
    assert pred.token_probs.shape == (n,) and ((pred.token_probs > 0) & (pred.token_probs <= 1)).all()
    np.testing.assert_allclose(pred.attention.sum(axis=(1, 2)), 1.0, atol=1e-4)  # a distribution per token
    assert len(pred.structure) == n and pred.expected_structure == recognizer.vocab.structure_tokens(pred.tokens)
    assert pred.alternatives[0].latex == latex
    probs = [a.probability for a in pred.alternatives]
    assert sum(probs) == pytest.approx(1.0) and probs == sorted(probs, reverse=True)
    assert set(pred.timings_ms) >= {"rasterize", "encode", "search", "explain", "total"}
    assert len(pred.token_alternatives) == n  # one-click corrections, per token
    assert all(t != tok for tok, alts in zip(pred.tokens, pred.token_alternatives) for t, _ in alts)


def test_greedy_and_beam_agree_on_learned_ink(recognizer):
    strokes = ink_for(SYNTHETIC_EXPRESSIONS[2])
    assert recognizer.recognize(strokes, beam_size=1).latex == recognizer.recognize(strokes, beam_size=10).latex


def test_the_rescoring_reads_in_groups_and_stops_between_them(recognizer, monkeypatch):
    # A long expression's rescoring is read in groups of rows, so new ink stops it between
    # groups rather than after the whole pass; grouped or not, the reading is the same.
    import model.beam as beam
    from model.cancel import RecognitionCancelled

    strokes = ink_for(SYNTHETIC_EXPRESSIONS[2])
    whole = recognizer.recognize(strokes, beam_size=10)
    passes = []
    rescore = beam._normalized_logprob
    monkeypatch.setattr(beam, "_normalized_logprob", lambda *a, **k: passes.append(a[4].shape[0]) or rescore(*a, **k))
    monkeypatch.setattr(beam, "RESCORE_GROUP_ARM_ELEMENTS", 1)  # a row per group
    recognizer.forget_encoding()
    grouped = recognizer.recognize(strokes, beam_size=10)
    assert len(passes) > 1 and set(passes) == {1}
    assert grouped.tokens == whole.tokens
    np.testing.assert_allclose([a.score for a in grouped.alternatives], [a.score for a in whole.alternatives], atol=1e-5)
    np.testing.assert_allclose(grouped.attention, whole.attention, atol=1e-5)

    passes.clear()
    with pytest.raises(RecognitionCancelled):
        recognizer.recognize(strokes, beam_size=10, should_stop=lambda: len(passes) >= 1)
    assert len(passes) == 1  # stopped after the first group, not at the end of the pass


@pytest.mark.parametrize("beam_size", [1, 10])
def test_a_recognition_stops_between_steps_when_asked_and_the_model_stays_usable(recognizer, beam_size):
    # The app stops reading old ink when new ink arrives: asked before every decoder step,
    # a True answer ends the search there, and the next recognition is unaffected.
    from model.cancel import RecognitionCancelled

    strokes = ink_for(SYNTHETIC_EXPRESSIONS[2])
    asked = []
    full = recognizer.recognize(strokes, beam_size=beam_size, should_stop=lambda: asked.append(1) and False)
    steps = len(asked)
    assert steps > len(full.tokens)  # asked at every step, not once per recognition

    def stop_at_step_three() -> bool:
        asked.append(1)
        return len(asked) > steps + 3

    with pytest.raises(RecognitionCancelled):
        recognizer.recognize(strokes, beam_size=beam_size, should_stop=stop_at_step_three)
    assert len(asked) == steps + 4  # it stopped at once, not at the end
    again = recognizer.recognize(strokes, beam_size=beam_size)
    assert again.latex == full.latex and again.alternatives == full.alternatives
    np.testing.assert_array_equal(again.attention, full.attention)


def test_the_image_is_encoded_once_per_ink_and_weights(tiny_checkpoint, monkeypatch):
    # The app reads each ink twice: a greedy preview after the stroke, the beam search when
    # the pen rests. Both, and the attention maps, share one encoding; new ink or changed
    # weights (a fine-tune in place) are encoded afresh.
    import torch

    from model.encoder import FoldedEncoder

    recognizer = Recognizer.load(tiny_checkpoint, device="cpu")
    calls = []
    encode = FoldedEncoder.forward

    def counting_encode(*args):
        calls.append(1)
        return encode(*args)

    monkeypatch.setattr(FoldedEncoder, "forward", counting_encode)
    first, second = SYNTHETIC_EXPRESSIONS[1], SYNTHETIC_EXPRESSIONS[2]
    assert recognizer.recognize(ink_for(first), beam_size=1).latex == first
    assert len(calls) == 1
    assert recognizer.recognize(ink_for(first), beam_size=4).latex == first
    assert len(calls) == 1
    assert recognizer.recognize(ink_for(second), beam_size=4).latex == second
    assert len(calls) == 2
    with torch.no_grad():
        recognizer.model.encoder.feature_proj.weight.mul_(0.0)  # the reading must change with it
    assert recognizer.recognize(ink_for(second), beam_size=4).latex != second
    assert len(calls) == 3


@pytest.mark.parametrize("beam", [1, 4])
@pytest.mark.parametrize("latex", SYNTHETIC_EXPRESSIONS[:3])
def test_the_reading_is_explained_as_a_teacher_forced_pass_would(recognizer, latex, beam):
    # Greedy and beam readings take their attention maps, token probabilities and structure
    # from the search's own steps (or the rescoring's pass); they must be those of the model
    # reading its answer again.
    import torch

    from model.hmer import direction_targets

    pred = recognizer.recognize(ink_for(latex), beam_size=beam)
    ids = recognizer.vocab.encode(pred.tokens)
    with torch.inference_mode():
        imgs = torch.from_numpy(pred.image)[None, None]
        memory, mask = recognizer.model.encode(imgs, torch.zeros(imgs.shape[0], *pred.image.shape, dtype=torch.bool))
        tgt, _ = direction_targets([ids], recognizer.vocab, reverse=False)
        main, aux, attn = recognizer.model.decoder(memory, mask, tgt, need_attention=True)
    n, (h, w) = len(ids), memory.shape[1:3]
    np.testing.assert_allclose(pred.attention, attn[0, :, :n].mean(dim=0).reshape(n, h, w).numpy(), atol=1e-5)
    probs = torch.softmax(main[0], dim=-1)[torch.arange(n), torch.tensor(ids)].numpy()
    np.testing.assert_allclose(pred.token_probs, probs, atol=1e-5)
    assert pred.structure == recognizer.vocab.decode(aux[0, :n].argmax(dim=-1).tolist())
    expected = token_replacements(pred.tokens, torch.softmax(main[0], dim=-1).numpy(), recognizer.vocab)
    assert [[t for t, _ in alts] for alts in pred.token_alternatives] == [[t for t, _ in alts] for alts in expected]
    assert any(pred.token_alternatives) and all(len(alts) == 5 for alts in pred.token_alternatives if alts)


def test_recognition_leaves_the_thread_setting_as_it_found_it(recognizer, monkeypatch):
    # The encoder runs on one thread; everything else in the process (the beam search,
    # a fine-tune) must keep the threads it had, also when encoding fails.
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        recognizer.recognize(ink_for(SYNTHETIC_EXPRESSIONS[0]), beam_size=3)
        assert torch.get_num_threads() == 2

        def out_of_memory(*args):
            assert torch.get_num_threads() == 1  # the encoder does run on one thread
            raise RuntimeError("out of memory")

        from model.encoder import FoldedEncoder

        monkeypatch.setattr(FoldedEncoder, "forward", out_of_memory)
        with pytest.raises(RuntimeError, match="out of memory"):  # new ink: no cached encoding
            recognizer.recognize(ink_for(SYNTHETIC_EXPRESSIONS[1]), beam_size=3)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_thread_cap_holds_for_the_whole_recognition_and_is_lifted_after(recognizer, monkeypatch):
    # While a fine-tune trains beside it, the app caps recognition's threads (the search's
    # steps included), so that the two never ask for more threads than the CPU has.
    import torch

    from model import beam

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    seen = []
    search = beam.beam_search_memory

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return search(*args, **kwargs)

    monkeypatch.setattr("model.recognizer.beam_search_memory", spy)
    try:
        recognizer.threads = 1
        recognizer.recognize(ink_for(SYNTHETIC_EXPRESSIONS[0]), beam_size=3)
        recognizer.threads = 0
        recognizer.recognize(ink_for(SYNTHETIC_EXPRESSIONS[1]), beam_size=3)
        assert seen == [1, 2] and torch.get_num_threads() == 2
    finally:
        recognizer.threads = 0
        torch.set_num_threads(before)


def test_ink_to_image_map_matches_the_rasterizer(recognizer):
    strokes = ink_for("1 + 2", size=5.0)
    pred = recognizer.recognize(strokes, beam_size=3)
    raster = rasterize(strokes, recognizer.config.raster)
    np.testing.assert_allclose(pred.ink_to_image, raster.transform.as_matrix())
    np.testing.assert_array_equal(pred.image, raster.image)


def test_a_photo_is_resized_to_the_scale_of_rasterized_ink(recognizer):
    cfg = recognizer.config.raster
    for latex in SYNTHETIC_EXPRESSIONS:
        image = rasterize(ink_for(latex), cfg).image
        photo = np.kron(255 - (image * 255).astype(np.uint8), np.ones((3, 3), dtype=np.uint8))  # 3x, dark on light
        rgb = np.repeat(photo[..., None], 3, axis=2)
        got = image_to_input(rgb, cfg)
        # components are not strokes (a '+' is one component, two strokes): the scale agrees within 20%
        assert abs(got.shape[1] - image.shape[1]) <= 0.2 * image.shape[1] + 4
        assert abs(got.shape[0] - image.shape[0]) <= 0.2 * image.shape[0] + 4
        assert np.median(got) < 0.05 and got.max() > 0.9  # ink bright on a dark background, like rasterized ink
        same = np.asarray(Image.fromarray(got).resize(image.shape[::-1], Image.Resampling.BILINEAR))
        blur = lambda a: ndimage.gaussian_filter(a, 1.5)  # noqa: E731 - tolerate a pixel of offset
        assert np.corrcoef(blur(same).ravel(), blur(image).ravel())[0, 1] > 0.6


def test_recognize_image_returns_a_full_prediction(recognizer):
    image = rasterize(ink_for("x ^ { 2 } = y"), recognizer.config.raster).image
    pred = recognizer.recognize_image((255 - image * 255).astype(np.uint8), beam_size=3)
    assert pred.ink_to_image is None and 0 <= pred.image.min() and pred.image.max() <= 1.0
    assert pred.attention.shape[0] == len(pred.tokens) > 0


def test_blank_or_empty_input_is_a_clear_error(recognizer):
    with pytest.raises(InkError):
        recognizer.recognize([], beam_size=3)
    with pytest.raises(InkError, match="no ink"):
        recognizer.recognize_image(np.full((50, 80), 255, dtype=np.uint8))


def test_a_missing_checkpoint_says_how_to_get_one(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        Recognizer.load(tmp_path / "none.pt")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "model.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_cli_prints_latex_and_json(tmp_path, tiny_checkpoint):
    write_inkml(tmp_path / "e.inkml", ink_for("y - x = 1"), None)
    for exact in ([], ["--exact"]):
        done = _cli(str(tmp_path / "e.inkml"), "--checkpoint", str(tiny_checkpoint), "--beam", "3", *exact)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "y - x = 1"
    done = _cli(str(tmp_path / "e.inkml"), "--checkpoint", str(tiny_checkpoint), "--json")
    data = json.loads(done.stdout)
    assert data["latex"] == "y - x = 1" and "attention" not in data and data["attention_shape"][0] == 5


@pytest.mark.parametrize("content, message", [(None, "no such file"), (b"<ink>", "not well-formed"), (b"", "empty")])
def test_cli_bad_input_exits_2_with_one_line(tmp_path, tiny_checkpoint, content, message):
    path = tmp_path / "bad.inkml"
    if content is not None:
        path.write_bytes(content)
    done = _cli(str(path), "--checkpoint", str(tiny_checkpoint))
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_cli_bad_checkpoint_exits_2(tmp_path):
    write_inkml(tmp_path / "e.inkml", ink_for("1 + 2"), None)
    (tmp_path / "c.pt").write_bytes(b"garbage")
    done = _cli(str(tmp_path / "e.inkml"), "--checkpoint", str(tmp_path / "c.pt"))
    assert done.returncode == 2 and "checkpoint" in done.stderr and "Traceback" not in done.stderr


def test_beam_search_never_returns_special_tokens_and_stops_early(recognizer):
    # A confident model ends many beams at once; empty beam slots must not survive as
    # zero-score "hypotheses" full of <pad> that keep the search running to max_len.
    import time

    strokes = ink_for("\\frac { a } { b } - 3", size=60, wobble=0.01, seed=2)
    start = time.perf_counter()
    pred = recognizer.recognize(strokes, beam_size=10)
    elapsed = time.perf_counter() - start
    specials = {"<pad>", "<sos>", "<eos>", "<space>"}
    for alt in pred.alternatives:
        assert not specials & set(alt.tokens), alt.latex
    assert all(len(a.tokens) < recognizer.max_len for a in pred.alternatives)
    assert elapsed < 30  # a hang guard, not a speed target


def test_a_greedy_reading_ends_at_any_special_token(recognizer):
    # The tiny model's greedy reading of this ink ranks <sos> first after a few symbols; the
    # preview must stop there, as the beam search does, not show "<sos>" in the LaTeX.
    pred = recognizer.recognize(ink_for("1 + 2"), beam_size=1)
    assert pred.tokens and not {"<pad>", "<sos>", "<eos>", "<space>"} & set(pred.tokens), pred.latex
    assert len(pred.attention) == len(pred.tokens) == len(pred.token_probs)


@pytest.mark.parametrize("stop", ["<sos>", "<pad>", "<eos>"])
def test_greedy_search_stops_at_the_first_special_token(stop):
    # A scripted decoder ranks `stop` first at the third step: the reading is the two
    # symbols before it, whatever the decoder would say afterwards.
    import types

    import torch

    from model.greedy import greedy_search_memory
    from model.vocab import Vocabulary

    vocab = Vocabulary.default()
    script = vocab.encode(["x", "y"]) + [vocab.tokens.index(stop)] + vocab.encode(["z", "2"]) + [vocab.eos_id]
    steps = iter(script)

    def step(state, last, need_aux):
        logits = torch.zeros(1, len(vocab))
        logits[0, next(steps)] = 5.0
        return logits, None, torch.ones(1, 1, 1)

    model = types.SimpleNamespace(decoder=types.SimpleNamespace(start=lambda *args: None, step=step))
    ids, _ = greedy_search_memory(model, torch.zeros(1, 1, 1, 4), torch.zeros(1, 1, 1, dtype=torch.bool), vocab)[0]
    assert vocab.decode(ids) == ["x", "y"]


def test_without_a_bundled_model_the_error_says_what_to_do(tmp_path, monkeypatch):
    import model.recognizer as recognizer_module

    monkeypatch.setattr(recognizer_module, "asset_path", lambda name: tmp_path / name)
    with pytest.raises(CheckpointError, match="--checkpoint.*hmer-train"):
        Recognizer.load()


def test_the_same_ink_is_drawn_once(tiny_checkpoint, monkeypatch):
    # The app reads each ink twice (the preview, then the beam search): the second reading
    # reuses the image; other ink, the same ink with a point moved, or a forgotten
    # encoding draw it again, and malformed ink still gets the rasterizer's error.
    from model import recognizer as module
    from model.rasterize import InkError

    rec = Recognizer.load(tiny_checkpoint, device="cpu")
    calls = []
    draw = module.rasterize
    monkeypatch.setattr(module, "rasterize", lambda *a, **k: calls.append(1) or draw(*a, **k))
    ink = ink_for(SYNTHETIC_EXPRESSIONS[1])
    first = rec.recognize(ink, beam_size=1)
    again = rec.recognize([s.copy() for s in ink], beam_size=4)
    assert len(calls) == 1 and again.latex == SYNTHETIC_EXPRESSIONS[1]
    np.testing.assert_array_equal(again.image, first.image)
    moved = [s.copy() for s in ink]
    moved[0][0, 0] += 0.5
    rec.recognize(moved, beam_size=1)
    assert len(calls) == 2
    rec.forget_encoding()
    rec.recognize(moved, beam_size=1)
    assert len(calls) == 3
    with pytest.raises(InkError):
        rec.recognize([[[1.0, 2.0]], [[1.0]]], beam_size=1)


def test_the_folded_encoder_encodes_as_the_model_does():
    # Recognition encodes with every BatchNorm folded into its convolution; with trained
    # (non-trivial) normalization statistics and a padded batch it must give the same encoding.
    import torch

    from model.config import HMERConfig
    from model.encoder import FoldedEncoder
    from model.hmer import HMER

    torch.manual_seed(0)
    model = HMER(HMERConfig.tiny())
    with torch.no_grad():
        for m in model.encoder.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    model.eval()
    imgs = torch.rand(2, 1, 45, 103)
    masks = torch.zeros(2, 45, 103, dtype=torch.bool)
    masks[1, :, 70:] = True
    with torch.no_grad():
        want, want_mask = model.encode(imgs, masks)
        got, got_mask = FoldedEncoder(model.encoder)(imgs, masks)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert torch.equal(got_mask, want_mask)


def test_the_arm_convolution_is_bf16_only_on_cpus_with_bf16_units_and_never_in_the_exact_search(
    tiny_checkpoint, monkeypatch
):
    import torch

    from model import recognizer as module

    monkeypatch.setattr(module, "cpu_has_bf16_units", lambda: False)  # emulated bf16 is slower than fp32
    assert module.Recognizer.load(tiny_checkpoint, device="cpu").model.decoder.arm.conv_dtype is None
    monkeypatch.setattr(module, "cpu_has_bf16_units", lambda: True)
    rec = module.Recognizer.load(tiny_checkpoint, device="cpu")
    arm = rec.model.decoder.arm
    assert rec.bf16_arm and arm.conv_dtype == torch.bfloat16
    rec.exact_search = True  # the reference's search, in fp32
    assert arm.conv_dtype is None
    rec.exact_search = False
    assert arm.conv_dtype == torch.bfloat16
    rec.bf16_arm = False
    assert arm.conv_dtype is None
