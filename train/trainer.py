"""The training loop: plain PyTorch on CPU (bf16 autocast), one GPU, or several via torchrun.

Run state lives in RUN_DIR:
    state.pt        everything needed to resume exactly (weights, optimizer,
                    lr schedule, EMA, RNG, data position), written atomically
    last.pt/best.pt model checkpoints in the project format (best by val ExpRate)
    metrics.jsonl   one JSON object per logged event
    curves.png      loss and ExpRate curves, refreshed at each validation
    config.json     the resolved configuration
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from model.checkpoint import atomic_torch_save, load_checkpoint, save_checkpoint
from model.config import HMERConfig
from model.greedy import greedy_search
from model.hmer import HMER
from model.recognizer import length_limit
from model.vocab import Vocabulary
from train.compose import composed_examples
from train.config import TrainConfig
from train.data import Batch, Example, InkDataset, collate, load_split, nominal_size, size_batches
from train.distributed import DistInfo, all_sum, barrier, init_distributed, shutdown
from train.metrics import ExpRateCounter
from train.plot import plot_metrics
from train.substitute import Renamer, SymbolBank

log = logging.getLogger(__name__)
STATE_VERSION = 1


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(name)


def autocast_context(device: torch.device, enabled: bool):
    if not enabled:
        return nullcontext()
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.float16)
    return torch.autocast(device.type, dtype=torch.bfloat16)


class _Plateau:
    """Multiply the lr by `factor` after `patience` validations without a new best."""

    def __init__(self, factor: float, patience: int) -> None:
        self.factor, self.patience = factor, patience
        self.best = -math.inf
        self.bad = 0
        self.scale = 1.0

    def step(self, metric: float) -> None:
        if metric > self.best:
            self.best, self.bad = metric, 0
            return
        self.bad += 1
        if self.bad > self.patience:
            self.scale *= self.factor
            self.bad = 0

    def state_dict(self) -> dict[str, float]:
        return {"best": self.best, "bad": self.bad, "scale": self.scale}

    def load_state_dict(self, d: dict[str, float]) -> None:
        self.best, self.bad, self.scale = d["best"], int(d["bad"]), d["scale"]


class Trainer:
    def __init__(
        self,
        cfg: TrainConfig,
        data_dir: str | Path,
        out_dir: str | Path,
        resume: bool = False,
        device: str = "auto",
        init_from: str | Path | None = None,
        train_examples: list[Example] | None = None,
        val_examples: list[Example] | None = None,
        show_progress: bool = True,
    ) -> None:
        self.cfg = cfg
        self.data_dir = Path(data_dir)
        self.out = Path(out_dir)
        self.show_progress = show_progress
        self.device = pick_device(device, int(os.environ.get("LOCAL_RANK", "0")))
        self.dist: DistInfo = init_distributed(self.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if self.device.type == "cpu":
            threads = cfg.loop.threads or max(1, (os.cpu_count() or 1) // self.dist.world_size)
            torch.set_num_threads(threads)
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            _add_file_log(self.out / "train.log")
        barrier(self.dist)
        self.vocab = Vocabulary.default()

        if train_examples is None:
            train_examples, report = load_split(self.data_dir, cfg.data.train_split, self.vocab)
            log.info("train: %d expressions (%d skipped)", len(train_examples), len(report.lines()))
        if val_examples is None and cfg.data.val_split:
            val_examples, _ = load_split(self.data_dir, cfg.data.val_split, self.vocab, limit=cfg.data.val_limit or None)
            log.info("validation (%s): %d expressions", cfg.data.val_split, len(val_examples))
        if not train_examples:
            raise ValueError(f"no training expressions found in {self.data_dir}")
        # Drawings come from the real expressions only: composed ones would repeat them, rescaled.
        bank = SymbolBank.from_examples(train_examples) if cfg.data.renamed else None
        if cfg.data.composed:
            composed = composed_examples(train_examples, cfg.data.composed, cfg.model.raster, cfg.loop.seed,
                                         fractions=cfg.data.composed_fractions)  # fmt: skip
            log.info("composed: %d expressions from two training ones (%d of them as fractions)",
                     len(composed), sum(" over " in (c.source or "") for c in composed))  # fmt: skip
            train_examples = train_examples + composed
        rewrite = None
        if bank is not None:
            rewrite = Renamer(bank, cfg.data.renamed)
            log.info("renamed: %.0f%% of draws rename symbols, from %d drawings of %d symbols",
                     100 * cfg.data.renamed, len(bank), len(bank.ink))  # fmt: skip
        self.train_set = InkDataset(train_examples, self.vocab, cfg.model.raster, cfg.augment, seed=cfg.loop.seed,
                                    rewrite=rewrite)  # fmt: skip
        self.val_examples = val_examples or []
        self.sizes = [nominal_size(e.strokes, cfg.model.raster) for e in train_examples]

        torch.manual_seed(cfg.loop.seed)
        if init_from is not None:
            self.model = self._init_model(init_from, cfg.model)
        else:
            self.model = HMER(cfg.model)
        self.model.to(self.device)
        if cfg.loop.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.ddp_model: torch.nn.Module = self.model
        if self.dist.enabled:
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.optimizer = self._make_optimizer()
        # batches per epoch barely vary with the shuffle; computed once for the cosine schedule
        self._steps_per_epoch = max(1, len(self._epoch_batches(0)) // self.dist.world_size)
        self.plateau = _Plateau(cfg.schedule.factor, cfg.schedule.patience)
        self.ema: dict[str, torch.Tensor] | None = None
        if cfg.loop.ema_decay > 0:
            self.ema = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.step = 0
        self.epoch = 0
        self.pos = 0  # batches of the current epoch already consumed (by all ranks)
        self.best = -1.0
        self.validated_step = -1  # the step whose weights were last validated in this session
        self.elapsed = 0.0  # training seconds over all sessions of this run
        if resume and (self.out / "state.pt").exists():
            self._load_state()
        elif resume:
            log.info("no state.pt in %s: starting a new run", self.out)
        if self.dist.is_main:
            (self.out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))

    # --- set-up -----------------------------------------------------------------------

    def _init_model(self, init_from: str | Path, config: HMERConfig) -> HMER:
        """The weights of `init_from` in a model of `config`. The rasterizer's settings may
        differ (the network's shapes do not depend on them): the run then teaches the
        weights to read ink drawn the config's way. Any other difference is an error."""
        model, _, _ = load_checkpoint(init_from, expect_vocab=self.vocab)
        if model.config.replace(raster=config.raster.to_dict()) != config:
            load_checkpoint(init_from, expect_vocab=self.vocab, expect_config=config)  # raises, naming the fields
        if model.config.raster != config.raster:
            log.warning("init: %s drew its images with %s; this run draws them with %s", init_from,
                        model.config.raster, config.raster)  # fmt: skip
            model.config = config
        return model

    def _make_optimizer(self) -> torch.optim.Optimizer:
        o = self.cfg.optim
        params = self.model.parameters()
        if o.name == "sgd":
            return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
        if o.name == "adamw":
            # one fused kernel instead of a few per tensor: on an H200 the unfused step took 16 ms of 130
            fused = self.device.type == "cuda"
            return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay, fused=fused)
        raise ValueError(f"unknown optimizer {o.name!r}: use 'sgd' or 'adamw'")

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        d = self.cfg.data
        batches = size_batches(self.sizes, d.pixel_budget, d.max_batch, self.cfg.loop.seed, epoch)
        world = self.dist.world_size
        if world > 1:  # every rank takes the same number of steps
            batches = batches[: max(world, len(batches) // world * world)]
        return batches

    def _collate(self) -> partial:
        d = self.cfg.data
        return partial(collate, vocab=self.vocab, shape_multiple=d.shape_multiple, length_multiple=d.length_multiple)

    def _lr(self) -> float:
        o, s = self.cfg.optim, self.cfg.schedule
        lr = o.lr
        if o.warmup_steps and self.step < o.warmup_steps:
            lr *= (self.step + 1) / o.warmup_steps
        if s.kind == "plateau":
            lr *= self.plateau.scale
        elif s.kind == "cosine":
            progress = self._progress()
            lr = s.min_lr + (lr - s.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
        elif s.kind != "constant":
            raise ValueError(f"unknown schedule {s.kind!r}: use 'plateau', 'cosine' or 'constant'")
        return max(lr, s.min_lr) if s.kind == "plateau" else lr

    def _progress(self) -> float:
        """How far the run is towards its first limit (epochs, steps or time budget), in [0, 1]."""
        loop = self.cfg.loop
        fractions = [self.step / max(1, loop.max_epochs * self._steps_per_epoch)]
        if loop.max_steps:
            fractions.append(self.step / loop.max_steps)
        if loop.budget_minutes:  # a fixed-time run (a lent GPU) still ends with a fully decayed lr
            fractions.append(self.elapsed / (loop.budget_minutes * 60))
        return min(1.0, max(fractions))

    # --- state ------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        state = {
            "version": STATE_VERSION,
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "plateau": self.plateau.state_dict(),
            "ema": self.ema,
            "step": self.step,
            "epoch": self.epoch,
            "pos": self.pos,
            "best": self.best,
            "elapsed": self.elapsed,
            "rng_cpu": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["rng_cuda"] = torch.cuda.get_rng_state_all()
        return state

    def save_state(self) -> None:
        if self.dist.is_main:
            atomic_torch_save(self._state(), self.out / "state.pt")
            save_checkpoint(self.out / "last.pt", self._eval_model(), self.vocab, self._meta())
        barrier(self.dist)

    def _load_state(self) -> None:
        state = torch.load(self.out / "state.pt", map_location="cpu", weights_only=True)
        if state.get("version") != STATE_VERSION:
            raise RuntimeError(f"{self.out / 'state.pt'} has state version {state.get('version')}, expected {STATE_VERSION}")
        if state["config"]["model"] != self.cfg.model.to_dict():
            raise RuntimeError(f"{self.out} was trained with another model config; use a new --out")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.plateau.load_state_dict(state["plateau"])
        self.ema = state["ema"]
        self.step, self.epoch, self.pos = state["step"], state["epoch"], state["pos"]
        self.best, self.elapsed = state["best"], state.get("elapsed", 0.0)
        torch.set_rng_state(state["rng_cpu"])
        if "rng_cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        log.info("resumed %s at step %d (epoch %d, batch %d), best ExpRate %.2f", self.out, self.step, self.epoch, self.pos, self.best)

    def _meta(self, **extra: Any) -> dict[str, Any]:
        return {"step": self.step, "epoch": self.epoch, "best_val_exprate": self.best,
                "val_split": self.cfg.data.val_split, "train_split": self.cfg.data.train_split,
                "train_hours": self.elapsed / 3600, "device": self.device.type,
                "world_size": self.dist.world_size, "train_config": self.cfg.to_dict(), **extra}  # fmt: skip

    def _eval_model(self) -> HMER:
        """The weights to evaluate and ship: the EMA when enabled."""
        if self.ema is None:
            return self.model
        model = HMER(self.cfg.model).to(self.device)
        model.load_state_dict(self.ema)
        return model

    def _log(self, record: dict[str, Any]) -> None:
        if self.dist.is_main:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"time": time.time(), "step": self.step, "epoch": self.epoch, **record}) + "\n")

    # --- training ---------------------------------------------------------------------

    def _train_step(self, batch: Batch) -> dict[str, float]:
        self.ddp_model.train()
        lr = self._lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        imgs = batch.imgs
        if self.cfg.loop.channels_last:
            imgs = imgs.contiguous(memory_format=torch.channels_last)
        with autocast_context(self.device, self.cfg.loop.bf16):
            main, aux = self.ddp_model(imgs, batch.masks, batch.targets.tgt)
            loss, parts = self.model.loss(main, aux, batch.targets, self.cfg.optim.label_smoothing)
        if not torch.isfinite(loss):
            log.warning("step %d: non-finite loss, batch skipped", self.step)
            self.optimizer.zero_grad(set_to_none=True)
            return {**parts, "skipped": 1.0, "lr": lr}
        loss.backward()
        if self.cfg.optim.grad_clip > 0:
            parts["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            # warm-up: early on the average must not stay anchored to the random init
            decay = min(self.cfg.loop.ema_decay, (1 + self.step) / (10 + self.step))
            with torch.no_grad():
                averaged, current = [], []
                for k, v in self.model.state_dict().items():
                    if v.is_floating_point():
                        averaged.append(self.ema[k])
                        current.append(v.detach())
                    else:
                        self.ema[k].copy_(v)
                torch._foreach_lerp_(averaged, current, 1 - decay)  # ema += (1-decay)(v-ema), batched
        return {**parts, "lr": lr}

    def validate(self, model: HMER | None = None) -> dict[str, float]:
        """Greedy ExpRate on the validation split (each rank takes a share)."""
        model = model or self._eval_model()
        model.eval()
        examples = self.val_examples[self.dist.rank :: self.dist.world_size]
        counter = ExpRateCounter()
        if examples:
            val_set = InkDataset(examples, self.vocab, self.cfg.model.raster, augment=None)
            sizes = [nominal_size(e.strokes, self.cfg.model.raster) for e in examples]
            batches = size_batches(sizes, self.cfg.data.pixel_budget, self.cfg.data.max_batch, 0, 0, shuffle=False)
            loader = DataLoader(val_set, batch_sampler=batches, collate_fn=self._collate())
            for batch in loader:
                batch = batch.to(self.device)
                limit = max(length_limit(len(examples[i].strokes)) for i in batch.indices)  # as the app does
                with autocast_context(self.device, self.cfg.loop.bf16):
                    results = greedy_search(model, batch.imgs, batch.masks, self.vocab, max_len=limit)
                for (ids, _), seq in zip(results, batch.seqs):
                    counter.add(ids, seq)
        total = all_sum([counter.n, *counter.within], self.dist, self.device)
        counter.n, counter.within = int(total[0]), [int(x) for x in total[1:]]
        return counter.summary() | {"n": counter.n}

    def _validate_and_keep_best(self) -> None:
        t0 = time.monotonic()
        metrics = self.validate()
        self.validated_step = self.step
        self.plateau.step(metrics["exprate"])
        improved = metrics["exprate"] > self.best
        if improved:
            self.best = metrics["exprate"]
        self._log({"event": "val", "split": self.cfg.data.val_split, "decode": "greedy",
                   "seconds": time.monotonic() - t0, **metrics})  # fmt: skip
        log.info("step %d: val %s ExpRate %.2f%% (best %.2f%%)", self.step, self.cfg.data.val_split, metrics["exprate"], self.best)
        if self.dist.is_main:
            if improved:
                save_checkpoint(self.out / "best.pt", self._eval_model(), self.vocab, self._meta(val=metrics))
            try:
                plot_metrics(self.out / "metrics.jsonl", self.out / "curves.png")
            except Exception as e:  # a plot must never stop training
                log.warning("could not plot curves: %s", e)
        self.save_state()

    def run(self) -> dict[str, Any]:
        cfg = self.cfg.loop
        start = time.monotonic()
        session_start_elapsed = self.elapsed
        last_ckpt = time.monotonic()
        collate_fn = self._collate()
        images = 0
        stop_reason = "max_epochs"
        try:
            while self.epoch < cfg.max_epochs:
                batches = self._epoch_batches(self.epoch)
                self.train_set.set_epoch(self.epoch)
                world, rank = self.dist.world_size, self.dist.rank
                todo = batches[self.pos :]
                mine = todo[rank::world]
                loader = DataLoader(
                    self.train_set, batch_sampler=mine, collate_fn=collate_fn,
                    num_workers=self.cfg.data.num_workers, pin_memory=self.device.type == "cuda",
                )  # fmt: skip
                bar = tqdm(total=len(batches) // world, initial=self.pos // world, desc=f"epoch {self.epoch}",
                           disable=not (self.show_progress and self.dist.is_main), dynamic_ncols=True, mininterval=2)  # fmt: skip
                t_log, n_log = time.monotonic(), 0
                for batch in loader:
                    batch = batch.to(self.device, non_blocking=True)
                    parts = self._train_step(batch)
                    self.step += 1
                    self.pos += world
                    n_log += batch.imgs.shape[0] * world
                    images += batch.imgs.shape[0] * world
                    self.elapsed = session_start_elapsed + (time.monotonic() - start)
                    bar.update(1)
                    if self.step % cfg.log_every == 0:
                        ips = n_log / max(1e-9, time.monotonic() - t_log)
                        bar.set_postfix(loss=f"{parts['loss']:.3f}", img_s=f"{ips:.1f}", lr=f"{parts['lr']:.2g}")
                        self._log({"event": "train", "images_per_s": ips, **parts})
                        t_log, n_log = time.monotonic(), 0
                    end_of_epoch = self.pos >= len(batches)
                    if end_of_epoch:
                        self.epoch += 1
                        self.pos = 0
                    if (cfg.val_every_steps and self.step % cfg.val_every_steps == 0) or (
                        end_of_epoch and not cfg.val_every_steps
                    ):
                        if self.val_examples:
                            self._validate_and_keep_best()
                        last_ckpt = time.monotonic()
                    elif time.monotonic() - last_ckpt > cfg.checkpoint_minutes * 60:
                        self.save_state()
                        last_ckpt = time.monotonic()
                    if cfg.max_steps and self.step >= cfg.max_steps:
                        stop_reason = "max_steps"
                        break
                    if cfg.max_minutes and time.monotonic() - start > cfg.max_minutes * 60:
                        stop_reason = "max_minutes"
                        break
                    if cfg.budget_minutes and self.elapsed >= cfg.budget_minutes * 60:
                        stop_reason = "budget_minutes"
                        break
                    if end_of_epoch:
                        break
                bar.close()
                if stop_reason != "max_epochs":
                    break
            if self.val_examples and self.step > 0 and self.validated_step != self.step:
                # A run that stops between validations (a time budget, --max-steps) ends with its lr
                # decayed: its last weights are often its best, so they compete for best.pt too.
                self._validate_and_keep_best()  # saves the state as well
            else:
                self.save_state()
        finally:
            seconds = time.monotonic() - start
            self._log({"event": "stop", "reason": stop_reason, "seconds": seconds, "images": images})
        result: dict[str, Any] = {"step": self.step, "epoch": self.epoch, "best": self.best, "reason": stop_reason}
        if stop_reason == "max_epochs" and cfg.final_beam and self.val_examples and self.dist.is_main:
            result["final"] = self.final_evaluation()
        return result

    def close(self, finished: bool = True) -> None:
        """Leave the process group (torchrun runs); `finished` False after a failure."""
        shutdown(self.dist, finished)

    def final_evaluation(self) -> dict[str, Any]:
        from train.evaluate import evaluate_examples

        path = self.out / "best.pt" if (self.out / "best.pt").exists() else self.out / "last.pt"
        model, vocab, _ = load_checkpoint(path)
        report = evaluate_examples(model.to(self.device), vocab, self.val_examples, beam=self.cfg.loop.final_beam,
                                   device=self.device, show_progress=self.show_progress)  # fmt: skip
        summary = {k: report[k] for k in ("exprate", "le1", "le2", "le3", "n")}
        self._log({"event": "final_eval", "split": self.cfg.data.val_split, "beam": self.cfg.loop.final_beam,
                   "checkpoint": str(path), **summary})  # fmt: skip
        return summary


def _add_file_log(path: Path) -> None:
    root = logging.getLogger()
    if any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path.resolve() for h in root.handlers):
        return
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)

