"""The one training loop, behind ``psn train`` and ``psn train-zoo``: AdamW/Adam/SGD with a cosine learning
rate, progressive masking for masked PSNs (λ = 1 at the end), an optional augmentation, a fixed data order
per seed. What differs between the two commands is how a batch of samples becomes the network's
time-major input (``encode``) and how it is augmented (``augment``).

Loss: cross-entropy of the mean over time of the per-step logits (the sequence's decision), plus, if
``stream_loss`` > 0, that weight times the mean over t of the cross-entropy of the running mean of the
logits of steps 0..t (what a stream reports after step t), which helps anytime classification.
"""

from __future__ import annotations

import math
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from psn.neurons import MaskedPSN, lambda_schedule

Encode = Callable[[torch.Tensor], torch.Tensor]
"""Samples [B, ...] as stored -> the network's input [T, B, *shape]."""
Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
"""Samples [B, ...] -> augmented samples of the same shape, drawing from the run's generator."""


class OptimizerName(StrEnum):
    ADAM = "adam"
    ADAMW = "adamw"
    SGD = "sgd"


@dataclass
class TrainConfig:
    epochs: int = 10
    lr: float = 2e-3
    optimizer: OptimizerName = OptimizerName.ADAMW
    batch_size: int = 64
    weight_decay: float = 0.01
    seed: int = 0
    stream_loss: float = 0.0
    warmup_epochs: float = 0.0
    eval_every: int = 0  # report test accuracy every this many epochs (0: only at the end)
    progress: bool = True

    @classmethod
    def from_flags(cls, args: Any, **more: Any) -> TrainConfig:
        """The flags ``psn train`` and ``psn train-zoo`` share (--epochs, --lr, --batch-size,
        --weight-decay, --seed, --stream-loss, --quiet: parsed ``args``), and ``more`` fields."""
        return cls(
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            weight_decay=args.weight_decay,
            seed=args.seed,
            stream_loss=args.stream_loss,
            progress=not args.quiet,
            **more,
        )


@dataclass
class TrainResult:
    epoch_losses: list[float] = field(default_factory=list)
    epoch_accuracies: list[float] = field(default_factory=list)
    train_loss: float = math.nan
    train_accuracy: float = math.nan
    test_loss: float = math.nan
    test_accuracy: float = math.nan
    wall_time_s: float = 0.0
    train_samples: int = 0
    test_samples: int = 0


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch (the weight init) and return the generator that fixes the data order and augmentation."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def to_time_major(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=torch.float32)
    return t.transpose(0, 1).contiguous()  # [N, T, F] -> [T, N, F]


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each sample of x [N, T, F] by up to ±max_shift along T (and F when F > 1), zero filled."""
    if max_shift <= 0:
        return x
    n, T, F_ = x.shape
    s_f = max_shift if F_ > 1 else 0
    padded = F.pad(x, (s_f, s_f, max_shift, max_shift))  # [N, T+2s, F+2s_f]
    off_t = torch.randint(0, 2 * max_shift + 1, (n, 1), generator=generator)
    off_f = torch.randint(0, 2 * s_f + 1, (n, 1), generator=generator)
    rows = off_t + torch.arange(T)  # [N, T]
    cols = off_f + torch.arange(F_)  # [N, F]
    return padded[torch.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]  # [N, T, F]


def sequence_loss(logits: torch.Tensor, y: torch.Tensor, stream_loss: float = 0.0) -> torch.Tensor:
    """logits [T, N, C], y [N]: CE of the mean over time (+ stream_loss × CE of every running mean)."""
    loss = F.cross_entropy(logits.mean(0), y)
    if stream_loss > 0:
        T, N, C = logits.shape
        steps = torch.arange(1, T + 1, dtype=logits.dtype).view(T, 1, 1)
        running = logits.cumsum(0) / steps  # [T, N, C]: the prediction after each step
        loss = loss + stream_loss * F.cross_entropy(running.reshape(T * N, C), y.repeat(T))
    return loss


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 500,
    encode: Encode = to_time_major,
) -> tuple[float, float]:
    """(mean loss, accuracy) of the decision (mean of the per-step logits) over samples x (as ``encode``
    takes them: [N, T, F] by default), y [N]."""
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    for i in range(0, len(y), batch_size):
        logits = model(encode(x[i : i + batch_size])).mean(0)  # [n, C]
        yb = y[i : i + batch_size]
        total_loss += float(F.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(1) == yb).sum())
    model.train(was_training)
    return total_loss / max(len(y), 1), correct / max(len(y), 1)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Weight decay on matrices and kernels only (not on biases, BatchNorm, thresholds, sliding taps)."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    name = OptimizerName(cfg.optimizer)
    if name is OptimizerName.ADAMW:
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if name is OptimizerName.ADAM:
        return torch.optim.Adam(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)


def cosine_schedule(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def fit(
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    cfg: TrainConfig,
    generator: torch.Generator,
    *,
    encode: Encode = to_time_major,
    augment: Augment | None = None,
) -> TrainResult:
    """Train ``model`` (forward [T, B, *shape] -> logits [T, B, C]; ``neurons()`` and ``set_lambda``, as
    psn.network.SeqClassifier and psn.zoo.SpikingNet have) in place on samples x_train (as ``encode`` takes
    them: [N, T, F] by default) and labels y_train [N]; ends with λ = 1 and the model in eval mode."""
    start = time.perf_counter()
    n = len(y_train)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    optimizer = make_optimizer(model, cfg)
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_schedule(cfg.epochs * steps_per_epoch, warmup)
    )
    result = TrainResult(train_samples=n, test_samples=len(y_test))
    masked = any(isinstance(m, MaskedPSN) for m in model.neurons())
    for epoch in range(cfg.epochs):
        lam = lambda_schedule(epoch, cfg.epochs)
        model.set_lambda(lam)
        model.train()
        order = torch.randperm(n, generator=generator)
        loss_sum, correct = 0.0, 0
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            leave=False,
            disable=not cfg.progress,
            file=sys.stderr,
        )
        for b in bar:
            idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            xb = x_train[idx] if augment is None else augment(x_train[idx], generator)  # [B, ...]
            yb = y_train[idx]
            logits = model(encode(xb))  # [T, B, C]
            loss = sequence_loss(logits, yb, cfg.stream_loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(idx)
            correct += int((logits.detach().mean(0).argmax(1) == yb).sum())
            seen = min((b + 1) * cfg.batch_size, n)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}", refresh=False)
        result.epoch_losses.append(loss_sum / n)
        result.epoch_accuracies.append(correct / n)
        line = f"epoch {epoch + 1}/{cfg.epochs} loss {loss_sum / n:.4f} acc {correct / n:.4f}"
        line += f" λ {lam:.2f}" if masked else ""
        line += f" lr {scheduler.get_last_lr()[0]:.2e} {time.perf_counter() - start:.0f}s"
        if cfg.eval_every and (epoch + 1) % cfg.eval_every == 0 and epoch + 1 < cfg.epochs:
            line += f" test {evaluate(model, x_test, y_test, encode=encode)[1]:.4f}"
        if cfg.progress:
            tqdm.write(line, file=sys.stderr)
    model.set_lambda(1.0)  # the paper's schedule already ends at 1; make sure a streaming model is causal
    model.eval()
    result.train_loss, result.train_accuracy = evaluate(model, x_train, y_train, encode=encode)
    result.test_loss, result.test_accuracy = evaluate(model, x_test, y_test, encode=encode)
    result.wall_time_s = time.perf_counter() - start
    return result


def run_metrics(result: TrainResult, args: Any, *, started: float, parameters: int, command: str) -> dict:
    """What every checkpoint's metrics.json records of a finished run (a command adds its own keys);
    ``args`` is the command's parsed flags (epochs, threads, seed)."""
    return {
        "test_accuracy": result.test_accuracy,
        "train_accuracy": result.train_accuracy,
        "test_loss": result.test_loss,
        "train_loss": result.train_loss,
        "epoch_losses": result.epoch_losses,
        "epochs": args.epochs,
        "train_samples": result.train_samples,
        "test_samples": result.test_samples,
        "parameters": parameters,
        "wall_time_s": round(time.perf_counter() - started, 2),
        "train_time_s": round(result.wall_time_s, 2),
        "threads": args.threads,
        "seed": args.seed,
        "command": command,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
    }


def done_line(prog: str, result: TrainResult, metrics: dict, out: Any) -> str:
    """The line a training command ends with."""
    return (
        f"{prog}: test accuracy {result.test_accuracy:.4f} (train {result.train_accuracy:.4f}), "
        f"{metrics['wall_time_s']:.0f}s -> {out}"
    )
