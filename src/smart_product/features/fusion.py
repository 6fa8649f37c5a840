"""`kind: fusion`: one model per fold that reads the photo, the text and the cheap per-row sets
together (../backbones/fusion.py). Fold k trains it on the other folds' rows, then embeds every
train and test row (fold{k}/train.npy, test.npy: the fused vectors its class layer reads);
fold{k}/class_head.npz is that class layer, so a `finetuned` head over this set is the fusion
model's own classifier, fold k's rows scored by the model that never saw their labels.

The photo and the text branches reuse the label-free lower-layer caches of the image and text
routes (features/_maps/, features/_text/, shared by every fold and with a fine-tuned set of the same
backbone and cut), so each fold trains only the top of both backbones, the adapters and the fusion
layers. With `train_blocks: all` / `train_layers: all` (a GPU) the whole backbones train, over the
decode-once pixels and the tokenised texts.

Options, beside `kind: fusion`:
- `image`: the image set whose backbone options (model, weights, image_size, cpu_bf16, ...) the
  photo branch takes; it need not be enabled. null: no photo branch. On a catalogue without enough
  photos (the set's `min_image_share`) the branch is left out, logged.
- `train_blocks`: the photo's top n stages trained over cached maps, or `all`; `augment`: as for
  image sets (none, mirror, flip).
- `text`, `train_layers`: the same for a text set (its model, view, max_length, cpu_bf16).
- `dense`: label-free dense sets of this config (tfidf's SVD, tabular, navec), each a branch,
  standardised over train + test. A sparse set is refused: give its SVD (`kind: tfidf`).
- `shop`: a learned embedding of the shop (`shop_min_count`: shops with fewer of the fold's
  training rows share the unknown code).
- the model and its training: `adapter`, `dropout`, `aux_weight`, `modality_dropout`,
  `label_smoothing`, `epochs`, `lr` (adapters and heads), `photo_lr`, `text_lr`, `batch_size`,
  `warmup`, `weight_decay`, `seed`; `embed_batch_size`; `save_weights`.
- `dense_batch_size` (512): the batch of a model with no backbone branch (no photo branch, no text
  set; ozon: the TF-IDF's SVD, navec, the tabular columns and the shop), whose step at `batch_size`
  64 is mostly Python overhead.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import ID, TARGET, DataError, label_array
from .tfidf import text_view

log = logging.getLogger(__name__)

TRAIN_KEYS = {
    "epochs",
    "lr",
    "photo_lr",
    "text_lr",
    "batch_size",
    "weight_decay",
    "warmup",
    "label_smoothing",
    "aux_weight",
    "modality_dropout",
    "seed",
}
MODEL_KEYS = {"adapter", "dropout"}
KEYS = {
    "kind",
    "name",
    "image",
    "train_blocks",
    "augment",
    "text",
    "train_layers",
    "dense",
    "shop",
    "shop_min_count",
    "embed_batch_size",
    "gpu_batch_size",
    "dense_batch_size",
    "save_weights",
    *TRAIN_KEYS,
    *MODEL_KEYS,
}


def _where(opts: dict) -> str:
    return f"config features.sets.{opts['name']}"


def _top(value, key: str, opts: dict):
    """`train_blocks` / `train_layers`: a number of top stages or layers, or "all"."""
    if value == "all" or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value
    raise DataError(f"{_where(opts)}.{key}: a number of top {key.split('_')[1]} or 'all', not {value!r}")


def branch_sets(opts: dict, all_sets: dict) -> dict:
    """The sets the fusion reads, checked before any work: {"image": opts | None, "text": opts | None,
    "dense": [names]}. `all_sets`: the config's features.sets, the disabled ones included."""
    from .kinds import CHEAP

    unknown = set(opts) - KEYS
    if unknown:
        raise DataError(f"{_where(opts)}: unknown keys {sorted(unknown)} (one of {sorted(KEYS - {'name'})})")
    out = {"dense": list(opts.get("dense") or [])}
    for branch in ("image", "text"):
        name = opts.get(branch)
        if name is None:
            out[branch] = None
            continue
        src = all_sets.get(name)
        if not isinstance(src, dict) or src.get("kind") != branch:
            article = "an" if branch == "image" else "a"
            raise DataError(f"{_where(opts)}.{branch}: {name!r} is not {article} {branch} set of features.sets")
        out[branch] = {**src, "name": name}
    _top(opts.get("train_blocks", 2), "train_blocks", opts)
    _top(opts.get("train_layers", 2), "train_layers", opts)
    for name in out["dense"]:
        src = all_sets.get(name)
        if not isinstance(src, dict) or src.get("kind") not in CHEAP or not src.get("enabled", True):
            raise DataError(f"{_where(opts)}.dense: {name!r} is not an enabled label-free set of features.sets")
        if src["kind"] == "tfidf_sparse":
            raise DataError(f"{_where(opts)}.dense: {name!r} is sparse; give its SVD instead (a `kind: tfidf` set)")
    if not (out["image"] or out["text"] or out["dense"] or opts.get("shop")):
        raise DataError(f"{_where(opts)}: no branch (image, text, dense or shop)")
    return out


def _dense(root: Path, names: list[str], train_ids, test_ids) -> tuple[dict, dict]:
    """The dense sets' matrices, standardised over train + test (no labels): ({name: train}, {name: test})."""
    tr, te = {}, {}
    for name in names:
        folder = root / name
        if not (folder / "meta.json").is_file() or not (folder / "train.npy").is_file():
            raise DataError(f"{folder}: missing or unfinished (the fusion set reads it; run `make features`)")
        ids = np.load(folder / "train_ids.npy"), np.load(folder / "test_ids.npy")
        if not (np.array_equal(ids[0], train_ids) and np.array_equal(ids[1], test_ids)):
            raise DataError(f"{folder}: made for other data (product ids differ); rerun `make features`")
        a, b = np.load(folder / "train.npy"), np.load(folder / "test.npy")
        both = np.concatenate([a, b])
        mean, std = both.mean(0), both.std(0) + 1e-6
        tr[name], te[name] = ((a - mean) / std).astype(np.float32), ((b - mean) / std).astype(np.float32)
    return tr, te


def shop_codes(train: pd.DataFrame, test: pd.DataFrame, fit: np.ndarray, min_count: int = 2):
    """Shop codes from the fold's training rows (no labels): 1..V for shops with >= min_count of
    them, 0 for every other shop (rare, or seen only in fold k or the test rows)."""
    counts = train.loc[fit, "shop_id"].value_counts()
    vocab = counts.index[counts >= min_count]
    code = pd.Series(np.arange(1, len(vocab) + 1), index=vocab)
    return (
        train["shop_id"].map(code).fillna(0).to_numpy(np.int64),
        test["shop_id"].map(code).fillna(0).to_numpy(np.int64),
        len(vocab) + 1,
    )


def _photo_branch(opts, src, train, test, ctx):
    """(module, train rows, test rows, note) of the photo branch, or None when the catalogue lacks photos."""
    from ..backbones import TopBlocks, n_stages, train_top_blocks
    from .backbone import _build, _items, _map_cache, absent_modality

    reason = absent_modality(train, test, src)
    if reason:
        log.warning("%s: no photo branch, %s", _where(opts), reason)
        return None
    enc = _build(src)
    top = _top(opts.get("train_blocks", 2), "train_blocks", opts)
    if top == "all":
        if not src.get("image_cache", True):
            raise DataError(f"{_where(opts)}: the photo branch reads the decode-once image cache; leave image_cache on")
        return enc, *(_items(f, src, s, enc.size, ctx, sync=True) for s, f in (("train", train), ("test", test))), None
    train_top_blocks(enc, top)
    augment = opts.get("augment")
    tr, te = _map_cache(enc, train, test, src, n_stages(enc) - top, augment == "mirror", ctx)
    return TopBlocks(enc, top), tr.augmented(augment), te, n_stages(enc) - top


def _text_branch(opts, src, train, test, ctx):
    """(module, train rows, test rows, tokenize, note) of the text branch."""
    from ..backbones import TopEncoder, train_top_layers
    from .backbone import _build, _lower_cache

    enc = _build(src)
    top = _top(opts.get("train_layers", 2), "train_layers", opts)
    if top == "all":
        view = src.get("view", "all")

        def tokenize(texts):
            b = enc.tokenizer(texts, padding=True, truncation=True, max_length=enc.max_length, return_tensors="pt")
            return {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}

        return enc, text_view(train, view), text_view(test, view), tokenize, None
    train_top_layers(enc, top)
    n_lower = len(enc.model.encoder.layer) - top
    tr, te = _lower_cache(enc, train, test, src, n_lower, ctx)
    return TopEncoder(enc, top), tr, te, None, n_lower


def fusion_embed(train, test, opts: dict, fold_of_row: np.ndarray, k: int, ctx: dict):
    """Fold k: train the fusion model on the rows of the other folds (k = -1: all rows), embed every
    train and test row. Returns (X_train, X_test, ids trained on, extra, model) like
    `finetuned_embed`, extra["class_head"] the class layer; under torchrun rank > 0 returns None."""
    import torch

    from ..backbones import FusionModel, FusionRows, dist_info, embed_fusion, train_fusion, use_cpu_bf16
    from ..backbones.hardware import device

    sets = branch_sets(opts, ctx["all_sets"])
    fit = fold_of_row != k if k >= 0 else np.ones(len(train), bool)
    classes, y = np.unique(label_array(train[TARGET]), return_inverse=True)
    torch.manual_seed(int(opts.get("seed", 0)))
    rows = {"train": {}, "test": {}}
    modules, cached = {}, {}
    if sets["image"] is not None:
        photo = _photo_branch(opts, sets["image"], train, test, ctx)
        if photo is not None:
            modules["photo"], rows["train"]["photo"], rows["test"]["photo"], cached["photo_lower_stages"] = photo
    if sets["text"] is not None:
        mod, tr, te, tokenize, cached["text_lower_layers"] = _text_branch(opts, sets["text"], train, test, ctx)
        modules["text"], rows["train"]["text"], rows["test"]["text"] = mod, tr, te
        rows["train"]["tokenize"] = rows["test"]["tokenize"] = tokenize
    tr_ids, te_ids = train[ID].to_numpy(), test[ID].to_numpy()
    rows["train"]["dense"], rows["test"]["dense"] = _dense(Path(ctx["root"]), sets["dense"], tr_ids, te_ids)
    n_shops = 0
    if opts.get("shop"):
        rows["train"]["shop"], rows["test"]["shop"], n_shops = shop_codes(
            train, test, fit, int(opts.get("shop_min_count", 2))
        )
    model = FusionModel(
        len(classes),
        photo=modules.get("photo"),
        text=modules.get("text"),
        dense_dims={n: a.shape[1] for n, a in rows["train"]["dense"].items()},
        n_shops=n_shops,
        photo_bf16=use_cpu_bf16(sets["image"].get("cpu_bf16")) if sets["image"] else False,
        text_bf16=use_cpu_bf16(sets["text"].get("cpu_bf16")) if sets["text"] else False,
        **{key: opts[key] for key in MODEL_KEYS if key in opts},
    )
    rows_train, rows_test = FusionRows(**rows["train"]), FusionRows(**rows["test"])
    desc = f"{opts['name']} fold{k}"
    train_opts = {key: opts[key] for key in TRAIN_KEYS if key in opts}
    if not modules:  # cheap branches only: a large batch (the step at 64 rows is mostly overhead)
        train_opts["batch_size"] = int(opts.get("dense_batch_size", 512))
        log.info("%s: no backbone branch; batches of %d rows", desc, train_opts["batch_size"])
    log_ = train_fusion(model, rows_train[np.flatnonzero(fit)], y[fit], desc=desc, **train_opts)
    if dist_info()[0] > 0:
        return None
    bs = int(opts.get("gpu_batch_size", 256) if device().type == "cuda" else opts.get("embed_batch_size", 128))
    if not modules:
        bs = max(bs, train_opts["batch_size"])
    Xtr, rate = embed_fusion(model, rows_train, bs, f"{desc} train")
    Xte, _ = embed_fusion(model, rows_test, bs, f"{desc} test")
    head = {name: t.detach().float().cpu().numpy() for name, t in model.head.state_dict().items()}
    extra = {
        "fusion": log_,
        "rate_per_s": rate,
        **{key: v for key, v in cached.items() if v is not None},
        "class_head": {**head, "classes": classes},
    }
    return Xtr, Xte, tr_ids[fit], extra, model


def fusion_key(opts: dict, all_sets: dict, keys: dict) -> dict:
    """What a fusion set's cache key adds to its own options: the backbone options it borrows and
    the keys of the dense sets it reads (a changed TF-IDF retrains the fusion)."""
    from .backbone import precision_key

    sets = branch_sets(opts, all_sets)
    return {
        "image": sets["image"] and {**sets["image"], **precision_key(sets["image"])},
        "text": sets["text"] and {**sets["text"], **precision_key(sets["text"])},
        "dense": {n: keys.get(n) for n in sets["dense"]},
    }
