"""Checkpoints: the project's own format, and conversion from the reference's.

Our format is a plain dict, loadable with `torch.load(weights_only=True)`:
    format          "hmer-checkpoint"
    format_version  int
    config          HMERConfig.to_dict()
    vocab           list of tokens in id order
    weights         state_dict of HMER
    meta            free-form training metadata (step, metrics, data, ...)
Training state (optimizer, scheduler, RNG) lives in the trainer's own files.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import torch

from model.atomic import atomic_write
from model.config import HMERConfig
from model.hmer import HMER
from model.vocab import Vocabulary

FORMAT = "hmer-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used, with the reason in words."""


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """torch.save, atomically: a crash or a full disk leaves any previous file intact."""
    atomic_write(path, lambda f: torch.save(obj, f))


def save_checkpoint(
    path: str | Path,
    model: HMER,
    vocab: Vocabulary,
    meta: dict[str, Any] | None = None,
    half: bool = False,
) -> None:
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if half:  # halves the file; floats are restored to fp32 on load
        weights = {k: (v.half() if v.is_floating_point() else v) for k, v in weights.items()}
    atomic_torch_save(
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "config": model.config.to_dict(),
            "vocab": list(vocab.tokens),
            "weights": weights,
            "meta": dict(meta or {}),
        },
        path,
    )


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file's dict, turning every failure into a CheckpointError."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint is empty (0 bytes): {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (zipfile.BadZipFile, EOFError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint is corrupt or truncated: {path} ({e})") from e
    except Exception as e:  # pickle errors, unsupported globals, ...
        raise CheckpointError(f"checkpoint cannot be read: {path} ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"not an hmer checkpoint: {path}")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint format version {ckpt.get('format_version')} is not supported "
            f"(this program reads version {FORMAT_VERSION}): {path}"
        )
    return ckpt


def model_from_checkpoint(
    ckpt: dict[str, Any],
    expect_vocab: Vocabulary | None = None,
    expect_config: HMERConfig | None = None,
    where: str = "checkpoint",
) -> tuple[HMER, Vocabulary]:
    """Build the model a checkpoint dict describes; explain any mismatch."""
    try:
        config = HMERConfig.from_dict(ckpt["config"])
        vocab = Vocabulary(ckpt["vocab"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{where} has an invalid config or vocabulary: {e}") from e
    if expect_vocab is not None and vocab != expect_vocab:
        diff = sorted(set(vocab.tokens) ^ set(expect_vocab.tokens))
        detail = f"differing tokens {diff[:8]}" if diff else "same tokens in another order"
        raise CheckpointError(f"{where} was trained with another vocabulary ({detail})")
    if expect_config is not None and config != expect_config:
        a, b = config.to_dict(), expect_config.to_dict()
        diff = [k for k in a if a[k] != b[k]]
        raise CheckpointError(f"{where} has another model config (differs in: {', '.join(diff)})")
    if config.vocab_size != len(vocab):
        raise CheckpointError(f"{where}: config expects {config.vocab_size} tokens, vocabulary has {len(vocab)}")
    model = HMER(config)
    weights = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["weights"].items()}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{where} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model, vocab


def load_checkpoint(
    path: str | Path,
    expect_vocab: Vocabulary | None = None,
    expect_config: HMERConfig | None = None,
) -> tuple[HMER, Vocabulary, dict[str, Any]]:
    ckpt = read_checkpoint(path)
    try:
        model, vocab = model_from_checkpoint(ckpt, expect_vocab, expect_config, where=str(path))
    except RuntimeError as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{path}: weights do not fit the model ({e})") from e
    return model, vocab, dict(ckpt.get("meta", {}))


# --- the reference (Lightning) layout -------------------------------------------------

_REFERENCE_PREFIXES = [  # reference key prefix -> ours
    ("encoder.model.", "encoder.densenet."),
    ("decoder.model.layers.", "decoder.layers."),
    ("decoder.model.arm.", "decoder.arm."),
    ("decoder.proj_imp.", "decoder.aux_head."),
    ("decoder.proj.", "decoder.head."),
]


def reference_key_to_ours(key: str) -> str:
    key = key.removeprefix("comer_model.")
    for theirs, ours in _REFERENCE_PREFIXES:
        if key.startswith(theirs):
            return ours + key[len(theirs) :]
    return key


def from_reference(ckpt: dict[str, Any], vocab: Vocabulary | None = None) -> tuple[HMER, Vocabulary]:
    """The project's model with the weights of a reference HMER-MTL checkpoint.

    `ckpt` is the Lightning checkpoint dict (`state_dict` with keys prefixed
    `comer_model.`, and `hyper_parameters`). The reference's vocabulary is the
    CROHME one in assets/vocab.txt unless `vocab` says otherwise.
    """
    try:
        hp = ckpt["hyper_parameters"]
        state = ckpt["state_dict"]
    except (KeyError, TypeError) as e:
        raise CheckpointError("not a reference checkpoint: needs 'state_dict' and 'hyper_parameters'") from e
    vocab = vocab or Vocabulary.default()
    config = HMERConfig(
        vocab_size=len(vocab),
        growth_rate=hp["growth_rate"],
        num_layers=hp["num_layers"],
        d_model=hp["d_model"],
        nhead=hp["nhead"],
        num_decoder_layers=hp["num_decoder_layers"],
        dim_feedforward=hp["dim_feedforward"],
        dropout=hp["dropout"],
        dc=hp["dc"],
        cross_coverage=hp["cross_coverage"],
        self_coverage=hp["self_coverage"],
        lambda_main=hp.get("lambda_1", 1.0),
        lambda_aux=hp.get("lambda_2", 1.0),
    )
    model = HMER(config)
    ours = {}
    for key, value in state.items():
        if not key.startswith("comer_model."):
            continue
        new = reference_key_to_ours(key)
        if new == "decoder.pos_enc.pe":  # a fixed table we compute ourselves
            continue
        ours[new] = value
    missing, unexpected = model.load_state_dict(ours, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"reference checkpoint does not match HMER-MTL: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model, vocab
