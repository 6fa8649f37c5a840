"""Image and text sets: a backbone's pooled embeddings, frozen (computed once) or fine-tuned per
fold (fold k: trained on the other folds' rows, embeds every row). The fold loop of a per-fold
set is in stage.py (make_features); the models and training loop in ../backbones.py."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import config_hash
from ..data import ID, TARGET, DataError, label_array
from .kinds import feature_sets, is_per_fold
from .store import np_save_atomic
from .tfidf import text_view

log = logging.getLogger(__name__)


def precision_key(opts: dict) -> dict:
    """The key's part for `cpu_bf16: auto`: what it means on this host (bf16 or float32 on CPU).
    A value other than true, false or auto is a config error here, before any work."""
    if opts.get("cpu_bf16") in (None, False, True):
        return {}
    from ..backbones import use_cpu_bf16

    try:
        return {"cpu_bf16_native": use_cpu_bf16(opts["cpu_bf16"])}
    except ValueError as exc:
        raise DataError(f"config features.sets.{opts.get('name')}.{exc}") from None


def _build(opts: dict):
    """The set's backbone; the torch seed is set first so randomly initialised weights (tests,
    `weights: random`) are the same in every process and fold job."""
    import torch

    from ..backbones import build_image_encoder, build_text_encoder

    torch.manual_seed(int((opts.get("finetune") or {}).get("seed", 0)))
    if opts["kind"] == "image":
        return build_image_encoder(
            opts["model"], opts.get("weights", "hub"), opts.get("image_size"), opts.get("mean"), opts.get("std")
        )
    return build_text_encoder(opts["model"], int(opts.get("max_length", 128)))


def _items(
    frame: pd.DataFrame,
    opts: dict,
    split: str = "train",
    size: int | None = None,
    ctx: dict | None = None,
    sync: bool = False,
):
    """What the backbone reads: texts (the set's view), or images: rows of the decode-once cache
    (default; `image_cache: false` decodes each image per pass instead, from its path).
    `sync` (every torchrun process calls it): rank 0 decodes, the others open the finished cache."""
    if opts["kind"] != "image":
        return text_view(frame, opts.get("view", "all"))
    paths = frame["image_path"].tolist()
    if not opts.get("image_cache", True) or ctx is None:
        return paths
    from ..backbones import barrier, dist_info
    from ..images import image_cache

    args = dict(
        root=ctx["root"],
        split=split,
        paths=paths,
        size=size,
        data_fp=ctx["data_fp"],
        draft=bool(opts.get("draft", True)),
        workers=opts.get("workers"),
    )
    if sync and dist_info()[1] > 1:
        if dist_info()[0] == 0:
            image_cache(**args)
        barrier()
    return image_cache(**args).rows()


def _batch_size(opts: dict) -> int:
    from ..backbones import device

    return int(opts.get("gpu_batch_size", 256) if device().type == "cuda" else opts.get("batch_size", 32))


def _embed_both(enc, train, test, opts, ctx, desc, items_train=None):
    """Embed every train and test row; `items_train`: the train items the caller already has."""
    from ..backbones import embed, use_cpu_bf16

    bs, tta = _batch_size(opts), opts.get("tta") == "flip"
    if opts.get("tta") not in (None, False, "flip"):
        raise DataError(f"config features.sets.{opts['name']}.tta: 'flip' or absent, not {opts['tta']!r}")
    size = getattr(enc, "size", None)
    if items_train is None:
        items_train = _items(train, opts, "train", size, ctx)
    bf16 = use_cpu_bf16(opts.get("cpu_bf16"))
    Xtr, _, rate = embed(
        enc, opts["kind"], items_train, bs, opts.get("workers"), desc=f"{desc} train", tta=tta, cpu_bf16=bf16
    )
    Xte, _, _ = embed(
        enc,
        opts["kind"],
        _items(test, opts, "test", size, ctx),
        bs,
        opts.get("workers"),
        desc=f"{desc} test",
        tta=tta,
        cpu_bf16=bf16,
    )
    return Xtr, Xte, rate


def frozen_embed(train, test, opts: dict, ctx: dict | None = None):
    enc = _build(opts)
    Xtr, Xte, rate = _embed_both(enc, train, test, opts, ctx, opts["name"])
    return (
        Xtr,
        Xte,
        {
            "rate_per_s": rate,
            "decode_once": opts["kind"] == "image" and ctx is not None and opts.get("image_cache", True),
            "tta": opts.get("tta"),
        },
    )


def _lower_cache(enc, train, test, opts: dict, n_lower: int, ctx: dict | None):
    """The token states of every train and test text after the first n_lower layers of the set's
    (pretrained, frozen) text encoder. They use no labels, so they are computed once and shared by
    every fold: features/_text/{key}/{split}.states.npy (float16, memory-mapped) + .mask.npy."""
    from ..backbones import StateRows, barrier, dist_info, lower_states, use_cpu_bf16

    key = config_hash(
        {
            "model": opts["model"],
            "view": opts.get("view", "all"),
            "max_length": int(opts.get("max_length", 128)),
            "cpu_bf16": opts.get("cpu_bf16"),
            "lower_layers": n_lower,
            "data": (ctx or {}).get("data_fp"),
            **precision_key(opts),
        }
    )
    folder = Path(ctx["root"]) / "_text" / key[:16] if ctx else None
    rank, world = dist_info()
    if folder and world > 1 and rank > 0:
        barrier()  # torchrun: rank 0 writes the cache, the others read it
    out = {}
    for split, frame in (("train", train), ("test", test)):
        states_path = folder / f"{split}.states.npy" if folder else None
        mask_path = folder / f"{split}.mask.npy" if folder else None
        if folder and mask_path.is_file():  # the mask is written last: its presence means done
            out[split] = StateRows(np.load(states_path, mmap_mode="r"), np.load(mask_path))
            continue
        texts = text_view(frame, opts.get("view", "all"))
        shape = (len(texts), enc.max_length, enc.dim)
        if folder:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f"{split}.states.tmp.npy"
            states = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)
        else:
            states = np.zeros(shape, np.float16)
        mask = np.zeros(shape[:2], np.int8)
        bs = _batch_size(opts)
        lower_states(
            enc, texts, n_lower, states, mask, bs, use_cpu_bf16(opts.get("cpu_bf16")), f"{opts['name']} {split}"
        )
        if folder:
            states.flush()
            del states
            tmp.rename(states_path)
            np_save_atomic(mask_path, mask)
            states = np.load(states_path, mmap_mode="r")
        out[split] = StateRows(states, mask)
    if folder and world > 1 and rank == 0:
        barrier()
    return out["train"], out["test"]


def finetuned_embed(train, test, opts: dict, fold_of_row: np.ndarray, k: int, ctx: dict | None = None):
    """Fold k: fine-tune on rows of the other folds (k=-1: on all rows), embed all train + test.
    Returns (X_train, X_test, ids trained on, extra, encoder); extra["class_head"] is the trained
    class head (weight, bias, classes: `embed`'s vectors -> the classifier's logits).

    Under torchrun every process trains (DDP) and rank 0 alone embeds; the others return None."""
    from ..backbones import dist_info, finetune, use_cpu_bf16

    ft = dict(opts["finetune"])
    allowed = set(inspect.signature(finetune).parameters) - {
        "encoder",
        "kind",
        "items",
        "labels",
        "n_classes",
        "workers",
        "desc",
        "cpu_bf16",
    }
    if set(ft) - allowed:
        raise DataError(
            f"config features.sets.{opts['name']}.finetune: unknown keys {sorted(set(ft) - allowed)} "
            f"(one of {sorted(allowed)})"
        )
    fit = fold_of_row != k if k >= 0 else np.ones(len(train), bool)
    classes, y = np.unique(label_array(train[TARGET]), return_inverse=True)
    enc = _build(opts)
    if opts["kind"] == "text" and ft.get("train_layers") is not None:
        return _finetune_top_layers(enc, train, test, opts, ft, fit, classes, y, k, ctx)
    items = _items(train, opts, "train", getattr(enc, "size", None), ctx, sync=True)
    rows = np.flatnonzero(fit)
    fit_items = items[rows] if not isinstance(items, list) else [items[i] for i in rows]
    log_, head = finetune(
        enc,
        opts["kind"],
        fit_items,
        y[fit],
        len(classes),
        workers=opts.get("workers"),
        cpu_bf16=use_cpu_bf16(opts.get("cpu_bf16")),
        desc=f"{opts['name']} fold{k}",
        return_head=True,
        **ft,
    )
    if dist_info()[0] > 0:
        return None
    Xtr, Xte, rate = _embed_both(enc, train, test, opts, ctx, f"{opts['name']} fold{k}", items)
    extra = {"finetune": log_, "rate_per_s": rate, "tta": opts.get("tta"), "class_head": {**head, "classes": classes}}
    return Xtr, Xte, train[ID].to_numpy()[fit], extra, enc


def _finetune_top_layers(enc, train, test, opts, ft, fit, classes, y, k, ctx):
    """`finetune.train_layers: n` on a text set: the lower layers stay as pretrained, so their token
    states are read from the label-free cache (_lower_cache), and fold k trains only the top n
    layers and the head on them, then embeds every row from the same cache."""
    from ..backbones import TopEncoder, dist_info, embed, finetune, train_top_layers, use_cpu_bf16

    ft = dict(ft)
    n_top = ft.pop("train_layers")
    train_top_layers(enc, n_top)  # checks n; freezes the rest
    n_lower = len(enc.model.encoder.layer) - n_top
    states_train, states_test = _lower_cache(enc, train, test, opts, n_lower, ctx)
    top = TopEncoder(enc, n_top)
    bf16, desc = use_cpu_bf16(opts.get("cpu_bf16")), f"{opts['name']} fold{k}"
    log_, head = finetune(
        top,
        "text",
        states_train[np.flatnonzero(fit)],
        y[fit],
        len(classes),
        workers=opts.get("workers"),
        cpu_bf16=bf16,
        desc=desc,
        return_head=True,
        **ft,
    )
    log_["train_layers"] = n_top
    if dist_info()[0] > 0:
        return None
    bs = _batch_size(opts)
    Xtr, _, rate = embed(top, "text", states_train, bs, desc=f"{desc} train", cpu_bf16=bf16)
    Xte, _, _ = embed(top, "text", states_test, bs, desc=f"{desc} test", cpu_bf16=bf16)
    extra = {
        "finetune": log_,
        "rate_per_s": rate,
        "lower_layers_cached": n_lower,
        "tta": None,
        "class_head": {**head, "classes": classes},
    }
    return Xtr, Xte, train[ID].to_numpy()[fit], extra, enc


def load_finetuned(cfg: dict, name: str, fold: int):
    """The backbone fine-tuned for fold `fold` of set `name` (saved with `save_weights: true`),
    built from the set's config and ready for `backbones.embed` in a single process."""
    import torch

    sets = feature_sets(cfg)
    if name not in sets or not is_per_fold(sets[name]):
        raise DataError(f"features.sets.{name}: not a fine-tuned (per-fold) set")
    path = Path(cfg["out_dir"]) / "features" / name / f"fold{fold}" / "encoder.pt"
    if not path.is_file():
        raise DataError(f"{path}: missing (set `save_weights: true` on features.sets.{name} and rerun)")
    enc = _build(sets[name])
    enc.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return enc.eval()
