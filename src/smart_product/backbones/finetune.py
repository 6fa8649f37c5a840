"""Fine-tuning: a backbone (or the top of one over a lower-layer cache) and a linear class head,
trained together on labelled rows; DDP under torchrun, LoRA or top layers only for text."""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..config import ConfigError, n_workers
from ..images import BatchAugment, CachedRows
from .batches import Loader
from .distributed import dist_info
from .embed import usable
from .hardware import autocast, device, prepare, to_device
from .lora import add_lora, merge_lora
from .lower import MapRows, StateRows, train_top_layers

log = logging.getLogger(__name__)


class Classifier(nn.Module):
    """Encoder + linear class head as one module (what DDP wraps)."""

    def __init__(self, encoder: nn.Module, n_classes: int):
        super().__init__()
        self.encoder, self.head = encoder, nn.Linear(encoder.dim, n_classes)

    def forward(self, x):
        return self.head(self.encoder(x).float())


def finetune(
    encoder: nn.Module,
    kind: str,
    items,
    labels,
    n_classes: int,
    epochs: int = 3,
    lr: float = 1e-4,
    head_lr: float | None = None,
    batch_size: int = 32,
    weight_decay: float = 0.01,
    warmup: float = 0.1,
    label_smoothing: float = 0.1,
    class_weights: bool = False,
    lora: dict | None = None,
    train_layers: int | None = None,
    workers=None,
    seed: int = 0,
    cpu_bf16: bool = False,
    desc="finetune",
    return_head: bool = False,
):
    """Train encoder + a linear class head on (items, labels); the encoder is updated in place.

    AdamW, linear warm-up then cosine decay, label smoothing or class weights. Images: resized
    crop, flip and rotation, per image (PIL, paths) or on the batch tensor on the device
    (CachedRows from the decode-once cache). `lora` (text): LoRA adapters through peft, merged
    into the weights at the end. `train_layers` (text): only the top n layers and the head train
    (train_top_layers). `cpu_bf16`: bf16 autocast on CPU too. Under torchrun
    (init_distributed) the model is wrapped in DDP and each process trains on its shard of every
    epoch; `batch_size` is the global batch. Returns a small training log; with `return_head`,
    (log, {"weight": n_classes x dim, "bias": n_classes}) too: the trained class head, float32,
    which maps `embed`'s vectors to the fine-tuned classifier's logits.
    """
    dev = device()
    torch.manual_seed(seed)
    _trainable_part(encoder, lora, train_layers)
    prepare(encoder, dev)
    model = Classifier(encoder, n_classes).to(dev).train()
    items, labels = _usable_rows(kind, items, labels)
    loader, sampler, augment = _train_batches(encoder, kind, items, labels, batch_size, workers, seed, dev)
    loss_fn = _loss(labels, n_classes, class_weights, label_smoothing, dev)
    trainable = [p for p in encoder.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        [{"params": trainable, "lr": lr}, {"params": model.head.parameters(), "lr": head_lr or lr * 10}],
        weight_decay=weight_decay,
    )
    sched = warmup_cosine(opt, epochs * len(loader), warmup)
    net = _distributed(model, dev)
    # On a CPU, convolutions train in float32 whatever `cpu_bf16` says: bf16 autocast halves the
    # throughput of EfficientNet-Lite0's top stages' training steps there (65 against 147 rows/s on
    # one core), while it speeds up their forward passes (874 against 509) and text encoders' training.
    train_bf16 = cpu_bf16 and not (dev.type == "cpu" and kind == "image")

    def step(x, y):
        x, y = to_device(x, dev), y.to(dev)
        if augment is not None:
            x = augment(x)
        with autocast(dev, train_bf16):
            logits = net(x)
        return loss_fn(logits.float(), y), logits, y

    t0 = time.time()
    history = train_epochs(loader, epochs, step, opt, sched, trainable + list(model.head.parameters()), desc, sampler)
    merge_lora(encoder)
    encoder.eval()
    log_ = {
        "history": history,
        "rows": int(len(labels)),
        "seconds": round(time.time() - t0, 2),
        "world_size": dist_info()[1],
        "rows_per_rank": len(sampler),
        "trainable_params": int(sum(p.numel() for p in trainable)),
        "lora": bool(lora),
        "train_layers": train_layers,
        "decode_once": isinstance(items, CachedRows),
    }
    if not return_head:
        return log_
    head = {k: v.detach().float().cpu().numpy() for k, v in model.head.state_dict().items()}
    return log_, head


def _trainable_part(encoder: nn.Module, lora: dict | None, train_layers: int | None) -> None:
    """Which part of the encoder trains: LoRA adapters (`lora`), the top layers (`train_layers`), or all."""
    if lora and train_layers is not None:
        raise ConfigError("finetune: lora and train_layers are two ways to train part of a model; use one")
    if lora:
        add_lora(encoder, lora)
    if train_layers is not None:
        train_top_layers(encoder, train_layers)


def _usable_rows(kind: str, items, labels):
    """The rows worth training on (rows without a usable image teach nothing) and their int64 labels."""
    labels = np.asarray(labels, dtype=np.int64)  # cross-entropy wants int64 class codes
    keep = usable(kind, items)
    if isinstance(items, (CachedRows, StateRows, MapRows)):
        return items[np.flatnonzero(keep)], labels[keep]
    return [it for it, k in zip(items, keep) if k], labels[keep]


def _train_batches(encoder, kind: str, items, labels, batch_size: int, workers, seed: int, dev):
    """(loader, sampler, augment): each process's shuffled shard of every epoch (DistributedSampler,
    for one process too) in batches of batch_size / world. Decode-once photos are augmented on the
    batch (BatchAugment): in a DataLoader worker beside the compute on a CPU, else on the device
    (`augment`, applied by the training step; None when the loader does it)."""
    from torch.utils.data.distributed import DistributedSampler

    rank, world = dist_info()
    sampler = DistributedSampler(range(len(labels)), num_replicas=world, rank=rank, shuffle=True, seed=seed)
    augment = BatchAugment(encoder.size) if isinstance(items, CachedRows) else None
    in_loader = augment is not None and dev.type == "cpu" and n_workers(workers) > 0
    loader = Loader(encoder, kind).make(
        items,
        max(1, math.ceil(batch_size / world)),
        labels=labels,
        train=True,
        workers=workers,
        sampler=sampler,
        augment=augment if in_loader else None,
        seed=seed,
    )
    return loader, sampler, None if in_loader or augment is None else augment.to(dev)


def _loss(labels, n_classes: int, class_weights: bool, label_smoothing: float, dev):
    """Cross-entropy with label smoothing, or with class weights (inverse square-root frequency)."""
    weight = None
    if class_weights:
        counts = np.bincount(labels, minlength=n_classes).astype(np.float32)
        weight = torch.tensor(np.where(counts > 0, (counts.sum() / np.maximum(counts, 1)) ** 0.5, 0), device=dev)
        weight = weight / weight[counts > 0].mean()
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)


def _distributed(model: nn.Module, dev, **kwargs) -> nn.Module:
    """The model wrapped in DDP under torchrun (more than one process), else itself."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    if dist_info()[1] > 1:
        return DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None, **kwargs)
    return model


def warmup_cosine(opt, total_steps: int, warmup: float):
    """The learning rates' schedule: a linear warm-up over the first `warmup` share of the steps,
    then a cosine decay to zero."""
    total = max(1, total_steps)
    warm = int(total * warmup)

    def schedule(step):
        if step < warm:
            return (step + 1) / max(1, warm)
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    return torch.optim.lr_scheduler.LambdaLR(opt, schedule)


def train_epochs(loader, epochs: int, step, opt, sched, params, desc: str, sampler=None) -> list[dict]:
    """The training loop: for every batch (x, ok, y) of every epoch, `step(x, y)` -> (loss, logits,
    y on the device), then a backward pass, gradients clipped to norm 1 over `params`, an optimiser
    and a scheduler step. `sampler.set_epoch` each epoch (DistributedSampler). Returns the history
    (loss and train accuracy per epoch), logged as it goes."""
    rank, world = dist_info()
    history, t0 = [], time.time()
    for epoch in range(epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        seen, loss_sum, correct = 0, 0.0, 0
        for x, _, y in tqdm(
            loader, desc=f"{desc} epoch {epoch + 1}/{epochs}", mininterval=2, leave=False, disable=rank > 0
        ):
            loss, logits, y = step(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            seen += len(y)
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
        history.append({"epoch": epoch + 1, "loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1)})
        log.info(
            "%s epoch %d: loss %.4f train acc %.3f (%.0fs%s)",
            desc,
            epoch + 1,
            history[-1]["loss"],
            history[-1]["train_acc"],
            time.time() - t0,
            f", rank {rank} of {world}" if world > 1 else "",
        )
    return history
