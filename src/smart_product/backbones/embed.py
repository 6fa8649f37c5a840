"""Embedding: a backbone's pooled vectors for every row (texts, image paths, decode-once cache rows,
or a lower-layer cache's rows read by a top module), rows without an image left at zeros."""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..images import CachedRows, has_path
from .batches import Loader
from .hardware import autocast, device, prepare, to_device
from .lower import MapRows, StateRows

log = logging.getLogger(__name__)


def usable(kind: str, items) -> np.ndarray:
    """Rows worth a model pass: every text; images with a path (paths) or a decoded image (caches)."""
    if kind == "text":
        return np.ones(len(items), bool)
    if isinstance(items, (CachedRows, MapRows)):
        return items.ok.copy()
    return np.array([has_path(p) for p in items], bool)


def mirrored(x):
    """The batch of the mirror images: a pixel batch flipped left-right, or a lower-map batch's
    mirrored photos' maps (`augment: mirror` caches them; flip TTA over maps needs them)."""
    if not isinstance(x, dict):
        return x.flip(-1)
    if "mirror" not in x:
        raise ValueError("flip TTA over cached maps needs the mirrored photos' maps (MapRows.mirror)")
    return {"maps": x["mirror"]}


def embed(
    encoder: nn.Module,
    kind: str,
    items,
    batch_size: int = 64,
    workers=None,
    desc="embed",
    tta: bool = False,
    cpu_bf16: bool = False,
):
    """Pooled embeddings (float32, n x dim) and the ok mask (False: missing/corrupt image -> zeros).

    `items`: texts, image paths, CachedRows (the decode-once cache), or StateRows / MapRows (a
    lower-layer cache, read by TopEncoder / TopBlocks). `tta` (images): the mean of the
    embeddings of the image and of its mirror image (horizontal flip; over maps, the mirrored
    photo's cached maps). `cpu_bf16`: bf16
    autocast on CPU too (see use_cpu_bf16).
    """
    dev = device()
    prepare(encoder, dev).eval()
    if not isinstance(items, (CachedRows, StateRows, MapRows)):
        items = list(items)
    n_all = len(items)
    if isinstance(items, StateRows):
        order = np.argsort(items.lengths(), kind="stable")
    elif kind == "text":  # sort by length so batches pad little
        order = np.argsort([len(t) for t in items], kind="stable")
    else:  # rows without an image are never pushed through the model: their vectors stay zeros
        order = np.flatnonzero(usable(kind, items))
    items = items[order] if isinstance(items, (CachedRows, StateRows, MapRows)) else [items[i] for i in order]
    out = np.zeros((n_all, encoder.dim), np.float32)
    ok_all = np.zeros(n_all, bool)
    if not len(items):
        log.info("%s: no %s to embed; all %d vectors are zeros", desc, kind, n_all)
        return out, ok_all, 0.0
    loader = Loader(encoder, kind).make(items, batch_size, workers=workers)
    done = np.zeros((len(items), encoder.dim), np.float32)
    ok_done = np.zeros(len(items), bool)
    t0, i, pending = time.time(), 0, []

    def flush():  # the device's results to the host every 32 batches, not after each (a sync per batch)
        nonlocal i
        for z, ok in pending:
            z, ok = z.cpu().numpy(), ok.numpy().astype(bool)
            z[~ok] = 0.0
            done[i : i + len(z)], ok_done[i : i + len(z)] = z, ok
            i += len(z)
        pending.clear()

    bf16 = dev.type == "cuda" or cpu_bf16
    with torch.inference_mode(), autocast(dev, cpu_bf16):
        for x, ok, _ in tqdm(loader, desc=desc, mininterval=2, leave=False):
            x = to_device(x, dev)
            z = encoder(x).float()
            if tta and kind == "image":
                z = (z + encoder(mirrored(x)).float()) / 2
            pending.append((z, ok))
            if len(pending) >= 32:
                flush()
        flush()
    rate = len(items) / max(time.time() - t0, 1e-9)
    log.info(
        "%s: %d %ss in %.1fs (%.1f %s/s, batch %d, %s %s%s)%s",
        desc,
        len(items),
        kind,
        time.time() - t0,
        rate,
        "img" if kind == "image" else "text",
        batch_size,
        dev.type,
        "bf16" if bf16 else "float32",
        ", flip TTA" if tta else "",
        f"; {n_all - len(items)} rows without an image left at zeros" if n_all > len(items) else "",
    )
    out[order], ok_all[order] = done, ok_done
    return out, ok_all, rate
