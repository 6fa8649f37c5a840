"""Image and text sets: a backbone's pooled embeddings, frozen (computed once) or fine-tuned per
fold (fold k: trained on the other folds' rows, embeds every row). The fold loop of a per-fold
set is in stage.py (make_features); the models and training loop in ../backbones/.

`finetune.train_layers: n` (text) and `finetune.train_blocks: n` (images) train only the top of the
backbone per fold, over the lower layers' outputs cached once for every row (they use no labels):
features/_text/{key}/ (token states) and features/_maps/{key}/ (feature maps, with the mirrored
photos' maps for `augment: mirror` or `tta: flip`)."""

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


def absent_modality(train: pd.DataFrame, test: pd.DataFrame, opts: dict) -> str | None:
    """Why an image set should not be computed (too few readable images in a split), or None.

    `min_image_share` (per set, default 0.05): below that share of readable images in train or
    in test the set is skipped: embedding blank rows costs the full model pass and adds nothing.
    """
    if opts["kind"] != "image":
        return None
    if opts.get("images") == "off":
        return "IMAGES=off: a text-only run"
    need = float(opts.get("min_image_share", 0.05))
    for split, frame in (("train", train), ("test", test)):
        share = float(frame["has_image"].mean()) if len(frame) else 0.0
        if share < need or not frame["has_image"].any():
            return (
                f"{split} has {int(frame['has_image'].sum())} readable images of {len(frame)} rows "
                f"({share:.1%} < min_image_share {need:.0%})"
            )
    return None


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


def _memmaps(folder: Path | None, split: str, specs: dict, fill) -> dict:
    """The arrays {folder}/{split}.{name}.npy of `specs` ({name: (shape, dtype)}), memory-mapped; made
    by `fill(arrays)` when one is missing: written aside, renamed when all are full (a killed run
    leaves no half-written cache behind). With no folder: in memory."""
    if folder is None:
        arrays = {name: np.zeros(shape, dtype) for name, (shape, dtype) in specs.items()}
        fill(arrays)
        return arrays
    paths = {name: folder / f"{split}.{name}.npy" for name in specs}
    if not all(p.is_file() for p in paths.values()):
        folder.mkdir(parents=True, exist_ok=True)
        for p in paths.values():
            p.unlink(missing_ok=True)
        tmp = {name: folder / f"{split}.{name}.tmp.npy" for name in specs}
        arrays = {
            name: np.lib.format.open_memmap(tmp[name], mode="w+", dtype=dtype, shape=shape)
            for name, (shape, dtype) in specs.items()
        }
        fill(arrays)
        for a in arrays.values():
            a.flush()
        del arrays
        for name in specs:
            tmp[name].rename(paths[name])
    return {name: np.load(p, mmap_mode="r") for name, p in paths.items()}


def _shared_cache(folder: Path | None, make):
    """torchrun: rank 0 runs `make()` (which writes the label-free cache into `folder`), the other
    ranks wait for it, then read it by running `make()` too; a single process just runs it."""
    from ..backbones import barrier, dist_info

    rank, world = dist_info()
    if folder and world > 1 and rank > 0:
        barrier()
    out = make()
    if folder and world > 1 and rank == 0:
        barrier()
    return out


def _lower_cache(enc, train, test, opts: dict, n_lower: int, ctx: dict | None):
    """The token states of every train and test text after the first n_lower layers of the set's
    (pretrained, frozen) text encoder. They use no labels, so they are computed once and shared by
    every fold: features/_text/{key}/{split}.states.npy (float16, memory-mapped) + .mask.npy."""
    from ..backbones import StateRows, lower_states, use_cpu_bf16

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
    bf16, bs = use_cpu_bf16(opts.get("cpu_bf16")), _batch_size(opts)

    def make():
        out = []
        for split, frame in (("train", train), ("test", test)):
            texts = text_view(frame, opts.get("view", "all"))
            specs = {
                "states": ((len(texts), enc.max_length, enc.dim), np.float16),
                "mask": ((len(texts), enc.max_length), np.int8),
            }
            desc = f"{opts['name']} {split}"
            a = _memmaps(
                folder,
                split,
                specs,
                lambda a: lower_states(enc, texts, n_lower, a["states"], a["mask"], bs, bf16, desc),
            )
            out.append(StateRows(a["states"], a["mask"]))
        return out

    return _shared_cache(folder, make)


def _map_cache(enc, train, test, opts: dict, n_lower: int, mirror: bool, ctx: dict | None):
    """The feature maps of every train and test photo after the stem and the first n_lower stages of
    the set's (pretrained, frozen) image encoder, and with `mirror` those of the mirrored photos.
    They use no labels, so they are computed once, from the decode-once image cache, and shared by
    every fold: features/_maps/{key}/{split}.maps.npy (float16 n x C x h x w, memory-mapped),
    .mirror.npy, .ok.npy (False: no readable photo; zeros). The key: the model and its weights, the
    image size, the cut, the precision and the decoded images."""
    from ..backbones import MapRows, lower_maps, map_shape, use_cpu_bf16

    if ctx is None or not opts.get("image_cache", True):
        raise DataError(
            f"config features.sets.{opts['name']}: finetune.train_blocks reads the decode-once image cache; "
            "leave image_cache on"
        )
    images = {s: _items(f, opts, s, enc.size, ctx, sync=True) for s, f in (("train", train), ("test", test))}
    key = config_hash(
        {
            "model": opts["model"],
            "weights": opts.get("weights", "hub"),
            "size": enc.size,
            "mean": list(enc.mean),
            "std": list(enc.std),
            "lower_stages": n_lower,
            "images": [images["train"].cache.key, images["test"].cache.key],
            "cpu_bf16": opts.get("cpu_bf16"),
            **precision_key(opts),
        }
    )
    folder = Path(ctx["root"]) / "_maps" / key[:16]
    shape, bf16, bs = map_shape(enc, n_lower), use_cpu_bf16(opts.get("cpu_bf16")), _batch_size(opts)

    def make():
        out = []
        for split, rows in images.items():
            n = len(rows)
            specs = {"maps": ((n, *shape), np.float16)}
            if mirror:
                specs["mirror"] = ((n, *shape), np.float16)
            specs["ok"] = ((n,), bool)

            def fill(a, rows=rows, split=split):
                lower_maps(enc, rows, n_lower, a["maps"], a.get("mirror"), bs, bf16, f"{opts['name']} {split}")
                a["ok"][:] = rows.ok

            a = _memmaps(folder, split, specs, fill)
            out.append(MapRows(a["maps"], np.asarray(a["ok"]), a.get("mirror")))
        return out

    return _shared_cache(folder, make)


def _check_finetune(opts: dict, ft: dict, params: set) -> None:
    """A set's `finetune` block, checked before any work: known keys, and the top-only keys on the
    kind they are for (train_layers: text; train_blocks and augment: images)."""
    from ..backbones.lower import AUGMENT

    where = f"config features.sets.{opts['name']}.finetune"
    allowed = (params | {"train_blocks", "augment"}) - {
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
        raise DataError(f"{where}: unknown keys {sorted(set(ft) - allowed)} (one of {sorted(allowed)})")
    if opts["kind"] != "image" and {"train_blocks", "augment"} & set(ft):
        raise DataError(f"{where}: train_blocks and augment are for image sets (text sets: train_layers)")
    if "augment" in ft and ft.get("train_blocks") is None:
        raise DataError(f"{where}: augment is for train_blocks (cached maps); whole photos are augmented as decoded")
    if ft.get("augment") not in AUGMENT:
        raise DataError(f"{where}.augment: mirror, flip or none, not {ft['augment']!r}")


def finetuned_embed(train, test, opts: dict, fold_of_row: np.ndarray, k: int, ctx: dict | None = None):
    """Fold k: fine-tune on rows of the other folds (k=-1: on all rows), embed all train + test.
    Returns (X_train, X_test, ids trained on, extra, encoder); extra["class_head"] is the trained
    class head (weight, bias, classes: `embed`'s vectors -> the classifier's logits).

    Under torchrun every process trains (DDP) and rank 0 alone embeds; the others return None."""
    from ..backbones import dist_info, finetune, use_cpu_bf16

    ft = dict(opts["finetune"])
    _check_finetune(opts, ft, set(inspect.signature(finetune).parameters))
    fit = fold_of_row != k if k >= 0 else np.ones(len(train), bool)
    classes, y = np.unique(label_array(train[TARGET]), return_inverse=True)
    enc = _build(opts)
    if ft.get("train_layers" if opts["kind"] == "text" else "train_blocks") is not None:
        return _finetune_top(enc, train, test, opts, ft, fit, classes, y, k, ctx)
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


def _finetune_top(enc, train, test, opts, ft, fit, classes, y, k, ctx):
    """`finetune.train_layers: n` (text) or `train_blocks: n` (images): the lower layers stay as
    pretrained, so their outputs are read from a label-free cache shared by every fold
    (_lower_cache, _map_cache), and fold k trains only the top n layers or stages and the head on
    them, then embeds every row from the same cache. `augment` (images): mirror, flip or none
    (../backbones/lower.py)."""
    from ..backbones import (
        TopBlocks,
        TopEncoder,
        dist_info,
        embed,
        finetune,
        n_stages,
        train_top_blocks,
        train_top_layers,
        use_cpu_bf16,
    )

    ft, kind, tta = dict(ft), opts["kind"], opts.get("tta") == "flip"
    if kind == "text":
        n_top = ft.pop("train_layers")
        train_top_layers(enc, n_top)  # checks n; freezes the rest
        n_lower = len(enc.model.encoder.layer) - n_top
        rows_train, rows_test = _lower_cache(enc, train, test, opts, n_lower, ctx)
        top, fit_rows = TopEncoder(enc, n_top), rows_train[np.flatnonzero(fit)]
    else:
        n_top, augment = ft.pop("train_blocks"), ft.pop("augment", None)
        train_top_blocks(enc, n_top)
        n_lower = n_stages(enc) - n_top
        rows_train, rows_test = _map_cache(enc, train, test, opts, n_lower, augment == "mirror" or tta, ctx)
        top, fit_rows = TopBlocks(enc, n_top), rows_train[np.flatnonzero(fit)].augmented(augment)
    bf16, desc = use_cpu_bf16(opts.get("cpu_bf16")), f"{opts['name']} fold{k}"
    log_, head = finetune(
        top,
        kind,
        fit_rows,
        y[fit],
        len(classes),
        workers=opts.get("workers"),
        cpu_bf16=bf16,
        desc=desc,
        return_head=True,
        **ft,
    )
    log_["train_layers" if kind == "text" else "train_blocks"] = n_top
    if dist_info()[0] > 0:
        return None
    bs = _batch_size(opts)
    Xtr, _, rate = embed(top, kind, rows_train, bs, desc=f"{desc} train", tta=tta, cpu_bf16=bf16)
    Xte, _, _ = embed(top, kind, rows_test, bs, desc=f"{desc} test", tta=tta, cpu_bf16=bf16)
    extra = {
        "finetune": log_,
        "rate_per_s": rate,
        "lower_layers_cached": n_lower,
        "tta": opts.get("tta"),
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
