"""Fine-tuning on a person's own samples, without forgetting what the model knows.

Defaults suit a few dozen samples: a fifth held out for validation, a low
learning rate, at most a few hundred steps, early stopping on the held-out
ExpRate, BatchNorm statistics frozen (a handful of samples must not redefine
them), half of every batch replayed from CROHME training data when it is
available, half of the weight change kept (the rest of the way back to the
base), and a limit on forgetting: when that is shown to lose more than a point
on a CROHME check, beyond the check's noise, a smaller share is kept. A
cancelled or failed run writes nothing.
"""

from __future__ import annotations

import copy
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from model.checkpoint import load_checkpoint, save_checkpoint
from model.greedy import greedy_search
from model.hmer import HMER
from model.recognizer import length_limit
from model.vocab import Vocabulary
from train.augment import AugmentConfig
from train.data import Example, InkDataset, collate, load_split
from train.metrics import ExpRateCounter

log = logging.getLogger(__name__)

TRAINABLE = ("encoder", "norm", "all")  # which weights a fine-tune changes
# CROHME 2014 expressions (the first ones) the forgetting limit reads before and after.
# On 100, a loss had to pass about 7 points before chance stopped explaining it.
CHECK_EXPRESSIONS = 300


def trainable_parameters(model: HMER, trainable: str) -> list[torch.nn.Parameter]:
    """"encoder": every encoder weight; "norm": only the encoder's normalization scales and
    shifts (about 1% of it: a per-channel adapter that can follow a pen's width and
    contrast but cannot memorize formulas); "all": every weight."""
    if trainable == "all":
        return list(model.parameters())
    if trainable == "norm":
        norms = (torch.nn.BatchNorm2d, torch.nn.LayerNorm)
        return [p for m in model.encoder.modules() if isinstance(m, norms) for p in m.parameters(recurse=False)]
    return list(model.encoder.parameters())


@dataclass(frozen=True)
class FinetuneConfig:
    max_steps: int = 200
    lr: float = 1e-4
    batch_size: int = 8
    holdout_fraction: float = 0.2  # of the user's samples, kept for validation
    replay_fraction: float = 0.5  # share of each batch drawn from base training data, when given
    eval_every: int = 25
    patience: int = 3  # evaluations without a better held-out ExpRate before stopping
    seed: int = 0
    # "encoder": adapt only how ink is seen, keeping the decoder's knowledge of formulas.
    # A few dozen expressions are too few formulas to retrain a language model on: a
    # whole-model fine-tune learns those formulas rather than the handwriting.
    # "norm": only the encoder's normalization scales and shifts. "all": every weight.
    trainable: str = "encoder"
    # Share of the fine-tune's weight change the new version keeps: base + keep * (tuned - base),
    # a weight-space interpolation toward the base as in WiSE-FT. All of the change fits the
    # samples best but forgets most; the README's adaptation figures show the trade. With the
    # seventh release, 75% cost other writers 1.7 points on average and 50% 0.4 (session 25,
    # 200 expressions); 50% cost each of four writers' others under a point on 1,800 (session 26).
    keep: float = 0.5
    # ExpRate points the CROHME check (`base_eval`) may lose beyond its noise
    # (`forgetting_beyond_noise`). When `keep` loses more, the largest of the smaller
    # `fallback_shares` within the limit is kept, or none. None: no limit.
    max_forgetting: float | None = 1.0
    fallback_shares: tuple[float, ...] = (0.5, 0.25)
    augment: AugmentConfig = field(
        default_factory=lambda: AugmentConfig(scale=(0.8, 1.25), rotate_deg=2.0, shear=0.1, stroke_jitter=0.02)
    )

    def __post_init__(self) -> None:
        if self.trainable not in TRAINABLE:
            raise ValueError(f"trainable must be one of {', '.join(TRAINABLE)}, not {self.trainable!r}")
        if self.max_steps < 1 or self.batch_size < 1 or self.eval_every < 1:
            raise ValueError("max_steps, batch_size and eval_every must be at least 1")
        if not 0.0 <= self.holdout_fraction < 1.0 or not 0.0 <= self.replay_fraction < 1.0:
            raise ValueError("holdout_fraction and replay_fraction must be in [0, 1)")
        if self.max_forgetting is not None and self.max_forgetting < 0:
            raise ValueError("max_forgetting must be at least 0 (or None for no limit)")
        if any(not 0 < s <= 1 for s in (self.keep, *self.fallback_shares)):
            raise ValueError("keep and fallback_shares must be fractions in (0, 1]")

    def shares(self) -> tuple[float, ...]:
        """The shares of the weight change the forgetting limit tries, largest first."""
        return (self.keep, *sorted({s for s in self.fallback_shares if s < self.keep}, reverse=True))


@dataclass
class FinetuneReport:
    base: str
    output: str | None  # None when cancelled or nothing was written
    n_train: int
    n_holdout: int
    steps: int
    stopped: str  # "max_steps", "early_stopping", "cancelled"
    replay: bool
    trainable: str = "encoder"  # which weights changed (FinetuneConfig.trainable)
    holdout_before: float | None = None  # ExpRate %, None without a held-out part
    holdout_after: float | None = None
    base_before: float | None = None  # ExpRate % on the fixed CROHME subset, when given
    base_after: float | None = None
    mix: float = 1.0  # share of the fine-tune's weight change kept (FinetuneConfig.keep, .max_forgetting)
    train_before: float = 0.0
    train_after: float = 0.0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def crohme_replay_and_check(data_dir: str | Path, vocab: Vocabulary) -> tuple[list[Example], list[Example]]:
    """CROHME's training expressions to replay, and the 2014 expressions the forgetting limit checks."""
    replay, _ = load_split(data_dir, "train", vocab)
    check, _ = load_split(data_dir, "2014", vocab, limit=CHECK_EXPRESSIONS)
    return replay, check


def split_holdout(samples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    if len(samples) < 3:
        return list(samples), []
    order = np.random.default_rng(seed).permutation(len(samples))
    n_hold = max(1, int(round(fraction * len(samples))))
    hold = set(order[:n_hold].tolist())
    return [s for i, s in enumerate(samples) if i not in hold], [s for i, s in enumerate(samples) if i in hold]


@torch.no_grad()
def read_correctly(model: HMER, vocab: Vocabulary, examples: list[Example], batch: int = 8) -> list[bool]:
    """Whether greedy decoding reads each expression exactly."""
    model.eval()
    counter = ExpRateCounter()
    flags: list[bool] = []
    ds = InkDataset(examples, vocab, model.config.raster, augment=None)
    for start in range(0, len(examples), batch):
        chunk = range(start, min(len(examples), start + batch))
        b = collate([ds[i] for i in chunk], vocab)
        limit = max(length_limit(len(examples[i].strokes)) for i in chunk)  # as the app decodes
        for (ids, _), truth in zip(greedy_search(model, b.imgs, b.masks, vocab, max_len=limit), b.seqs):
            flags.append(counter.add(ids, truth) == 0)
    return flags


def exprate(model: HMER, vocab: Vocabulary, examples: list[Example], batch: int = 8) -> float:
    return percent(read_correctly(model, vocab, examples, batch)) if examples else 0.0


def percent(flags: list[bool]) -> float:
    return 100.0 * sum(flags) / len(flags) if flags else 0.0


def lost_and_gained(before: list[bool], after: list[bool]) -> tuple[int, int]:
    """Expressions read right before but not after, and after but not before (the same expressions)."""
    return sum(b and not a for b, a in zip(before, after)), sum(a and not b for b, a in zip(before, after))


def forgetting_beyond_noise(before: list[bool], after: list[bool], z: float = 1.645) -> float:
    """ExpRate points lost from `before` to `after` on the same expressions, less what
    chance could explain: the one-sided 95% lower bound of the paired (McNemar)
    difference. A hundred expressions measure a loss only to a few points: when ten of
    them change, a point is well inside the noise."""
    lost, gained = lost_and_gained(before, after)
    return 100.0 * (lost - gained - z * math.sqrt(lost + gained)) / max(1, len(before))


@torch.no_grad()
def mean_loss(model: HMER, vocab: Vocabulary, examples: list[Example], batch: int = 8) -> float:
    """Teacher-forced loss (both directions, both heads) per expression, without augmentation."""
    model.eval()
    ds = InkDataset(examples, vocab, model.config.raster, augment=None)
    total = 0.0
    for start in range(0, len(examples), batch):
        chunk = range(start, min(len(examples), start + batch))
        b = collate([ds[i] for i in chunk], vocab)
        main, aux = model(b.imgs, b.masks, b.targets.tgt)
        total += float(model.loss(main, aux, b.targets)[0]) * len(chunk)
    return total / max(1, len(examples))


def mix_weights(base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], share: float) -> dict:
    """base + share * (tuned - base) for every float tensor; counters come from `tuned`."""
    return {k: torch.lerp(base[k], v, share) if v.is_floating_point() else v for k, v in tuned.items()}


def limit_forgetting(
    model: HMER, base_state: dict, vocab: Vocabulary, check: list[Example], check_before: list[bool],
    limit: float, shares: tuple[float, ...] | None = None, cancel: threading.Event | None = None,
) -> tuple[float, float, float]:  # fmt: skip
    """Move `model` (fine-tuned from `base_state`) back toward the base until it is not
    shown to lose more than `limit` ExpRate points on `check` (`forgetting_beyond_noise`,
    against the base's `read_correctly` flags `check_before`): the largest of `shares`
    (default `FinetuneConfig().shares()`) of its weight change that passes, or none.
    Returns (share kept, ExpRate on check, what the largest share lost)."""
    tuned = copy.deepcopy(model.state_dict())
    first_drop = None
    for share in sorted(FinetuneConfig().shares() if shares is None else shares, reverse=True):
        if cancel is not None and cancel.is_set():
            break
        model.load_state_dict(mix_weights(base_state, tuned, share))
        after = read_correctly(model, vocab, check)
        first_drop = percent(check_before) - percent(after) if first_drop is None else first_drop
        if forgetting_beyond_noise(check_before, after) <= limit:
            return share, percent(after), first_drop
    model.load_state_dict(base_state)
    return 0.0, percent(check_before), first_drop if first_drop is not None else 0.0


def _apply_forgetting_limit(
    model: HMER, base_state: dict, vocab: Vocabulary, base_eval: list[Example], base_flags: list[bool],
    config: FinetuneConfig, report: FinetuneReport, cancel: threading.Event | None,
) -> None:  # fmt: skip
    """`limit_forgetting` for a fine-tune: sets report.mix and report.base_after, and says
    what was given up."""
    limit = config.max_forgetting
    share, report.base_after, drop = limit_forgetting(model, base_state, vocab, base_eval, base_flags, limit,
                                                      config.shares(), cancel)  # fmt: skip
    if cancel is not None and cancel.is_set():
        return  # a cancelled run writes nothing: no share was chosen
    report.mix = share
    if share == 0:
        report.notes.append(f"every share of the fine-tune's weight change lost more than {limit:g} points on the "
                            "CROHME check, beyond its noise: this version keeps the base weights")  # fmt: skip
    elif share < config.keep:
        report.notes.append(f"kept {share:.0%} of the fine-tune's weight change: {config.keep:.0%} of it lost "
                            f"{drop:.1f} points on the CROHME check, more than its noise and the limit of "
                            f"{limit:g} explain")  # fmt: skip


def _freeze_batchnorm(model: HMER) -> None:
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.eval()


def finetune(
    base: str | Path,
    samples: list[Example],
    out: str | Path,
    config: FinetuneConfig = FinetuneConfig(),
    replay: list[Example] | None = None,
    base_eval: list[Example] | None = None,
    progress: Callable[[int, int, dict], None] | None = None,
    cancel: threading.Event | None = None,
    meta: dict | None = None,
) -> FinetuneReport:
    start = time.monotonic()
    if not samples:
        raise ValueError("no samples to fine-tune on")
    model, vocab, base_meta = load_checkpoint(base)
    train_set, holdout = split_holdout(samples, config.holdout_fraction, config.seed)
    report = FinetuneReport(str(base), None, len(train_set), len(holdout), 0, "max_steps", bool(replay),
                            config.trainable)  # fmt: skip
    if not replay:
        report.notes.append("no CROHME training data given: fine-tuning on your samples only (no replay)")
    if not holdout:
        report.notes.append("fewer than 3 samples: nothing held out, the result is not validated")
    elif len(holdout) < 10:  # with 2-4 held out, one sample swings the figure that stops and selects
        report.notes.append(f"only {len(holdout)} samples held out: each moves the held-out figure by "
                            f"{100 / len(holdout):.0f} points; save more samples for a firmer check")  # fmt: skip
    report.holdout_before = exprate(model, vocab, holdout) if holdout else None
    base_flags = read_correctly(model, vocab, base_eval) if base_eval else []
    report.base_before = percent(base_flags) if base_eval else None
    report.train_before = exprate(model, vocab, train_set)

    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    user_ds = InkDataset(train_set, vocab, model.config.raster, config.augment, seed=config.seed)
    replay_ds = InkDataset(replay, vocab, model.config.raster, config.augment, seed=config.seed + 1) if replay else None
    params = trainable_parameters(model, config.trainable)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    base_state = copy.deepcopy(model.state_dict())
    best_state = base_state
    # A few held-out samples make ExpRate coarse (3 samples: steps of 33 points), so ties
    # are broken by the held-out loss; otherwise a fine-tune that helps would rarely show.
    best_score = (report.holdout_before, -mean_loss(model, vocab, holdout)) if holdout else None
    bad = 0
    n_replay = int(round(config.batch_size * config.replay_fraction)) if replay_ds else 0
    n_user = max(1, config.batch_size - n_replay)
    for step in range(1, config.max_steps + 1):
        if cancel is not None and cancel.is_set():
            report.stopped = "cancelled"
            report.steps = step - 1
            report.seconds = time.monotonic() - start
            return report
        user_ds.set_epoch(step)
        items = [user_ds[int(i)] for i in rng.choice(len(user_ds), size=n_user, replace=len(user_ds) < n_user)]
        if replay_ds is not None:
            replay_ds.set_epoch(step)
            items += [replay_ds[int(i)] for i in rng.choice(len(replay_ds), size=n_replay, replace=False)]
        batch = collate(items, vocab)
        model.train()
        _freeze_batchnorm(model)
        main, aux = model(batch.imgs, batch.masks, batch.targets.tgt)
        loss, parts = model.loss(main, aux, batch.targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        report.steps = step
        info = {"loss": parts["loss"]}
        if holdout and (step % config.eval_every == 0 or step == config.max_steps):  # the last step too
            score = (exprate(model, vocab, holdout), -mean_loss(model, vocab, holdout))
            info["holdout_exprate"], info["holdout_loss"] = score[0], -score[1]
            if score > best_score:
                best_score, bad = score, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad += 1
                if bad >= config.patience:
                    report.stopped = "early_stopping"
                    if progress:
                        progress(step, config.max_steps, info)
                    break
        if progress:
            progress(step, config.max_steps, info)
    if holdout:
        model.load_state_dict(best_state)  # the best validated weights (possibly the base's)

    def stage(text: str) -> None:  # the checks after training take a while: say what is going on
        if progress:
            progress(report.steps, config.max_steps, {"loss": info["loss"], "stage": text})

    if holdout and best_state is base_state:  # nothing to keep, and nothing the base could have forgotten
        report.mix = 0.0
        report.notes.append("no step read your held-out samples better than the base model: this version "
                            "has the base's weights")  # fmt: skip
    elif base_eval and config.max_forgetting is not None and not (cancel is not None and cancel.is_set()):
        stage("checking what it forgot on the CROHME subset")
        _apply_forgetting_limit(model, base_state, vocab, base_eval, base_flags, config, report, cancel)
    elif config.keep < 1:
        model.load_state_dict(mix_weights(base_state, model.state_dict(), config.keep))  # lerp makes new tensors
        report.mix = config.keep
    if cancel is not None and cancel.is_set():
        report.stopped = "cancelled"
        report.seconds = time.monotonic() - start
        return report
    stage("measuring the new version")
    report.holdout_after = exprate(model, vocab, holdout) if holdout else None
    if base_eval and report.base_after is None:
        report.base_after = exprate(model, vocab, base_eval)
    report.train_after = exprate(model, vocab, train_set)
    report.seconds = time.monotonic() - start
    save_checkpoint(out, model, vocab, {**base_meta, **(meta or {}), "finetune": report.to_dict(), "parent": str(base)})
    report.output = str(out)
    return report
