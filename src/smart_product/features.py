"""Stage `features`: data -> feature matrices under features/{set}/, cached.

Kinds of set (config `features.sets`, each `{name: {kind: ..., options}}`):
- tabular:  rating (+ missing flag), sale, log shop frequency, log text lengths, has_image,
            empty-field flags, attribute/key counts. No labels.
- tfidf:    word (1-2) and char_wb (2-5) n-grams over all text, TruncatedSVD to `svd_dim`;
            `fields:` makes one TF-IDF block per field instead (title, description, dicts, ...).
            Fit on train + test text (no labels are used, so this is leak-free; transductive).
- tfidf_sparse: the same TF-IDF matrix kept sparse (train.npz / test.npz) for linear heads.
- navec:    mean navec vectors (shipped in `natasha`, nltk WordPunctTokenizer) of the shop title,
            the title, the dict keys and the dict values.
- image:    pooled embeddings of an image backbone (backbones.py).
- text:     pooled embeddings of a text encoder over a view: `all` (title + description +
            attributes + dict text) or `title`.
image/text sets with a `finetune:` block are per-fold (the fold rule in DESIGN.md): for fold k the
backbone is fine-tuned on the rows of the other folds, then embeds every train and test row ->
features/{set}/fold{k}/train.npy, test.npy, trained_on.npy (product ids it was fit on) and,
with `save_weights: true`, encoder.pt (load_finetuned). Everything else is computed once ->
features/{set}/train.npy, test.npy.

Image sets read the decode-once cache features/_images/{size}/ (images.py; `image_cache: false`
decodes per pass instead), `tta: flip` averages each embedding with its mirror image's,
`finetune.lora: {r, alpha, ...}` trains LoRA adapters (peft) of a text encoder, and `cpu_bf16:
auto` runs a backbone in bf16 autocast on a CPU with native bf16 (float32 elsewhere; a GPU always
runs bf16). Folds as jobs: `make features FOLD=k` computes fold k of the per-fold sets; under
torchrun the fine-tuning is DDP.

Cache: each finished set (or fold) has a meta.json holding a key = hash(set config, data
fingerprint[, folds]); a rerun with the same key does nothing, a killed run redoes only the
unfinished sets/folds. Row order: train_ids.npy / test_ids.npy beside the matrices.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .config import config_hash
from .data import DICT_FIELDS, ID, TARGET, DataError, apply_image_status, check_images, fingerprint, load_data

log = logging.getLogger(__name__)
CHEAP = ("tabular", "tfidf", "tfidf_sparse", "navec", "listing")
BACKBONE = ("image", "text")


# ---------------------------------------------------------------- text views


def _joined(frame: pd.DataFrame, columns: list[str]) -> pd.Series:
    out = frame[columns[0]].fillna("")
    for c in columns[1:]:
        out = out + " | " + frame[c].fillna("")
    return out


DICT_TEXT = ["attributes_text"] + [f"{f}_text" for f in DICT_FIELDS]


def text_view(frame: pd.DataFrame, view: str) -> list[str]:
    if view == "title":
        return frame["title"].fillna("").tolist()
    if view == "all":
        return _joined(frame, ["title", "description", *DICT_TEXT]).tolist()
    raise ValueError(f"unknown text view {view!r} (all, title)")


# ---------------------------------------------------------------- cheap sets


def tabular(train: pd.DataFrame, test: pd.DataFrame, opts: dict):
    both = pd.concat([train, test], ignore_index=True)
    shop_freq = both["shop_id"].map(both["shop_id"].value_counts())
    cols = {
        "rating": both["rating"].fillna(-1.0),
        "rating_missing": both["rating"].isna(),
        "sale": both["sale"],
        "log_shop_freq": np.log1p(shop_freq),
        "has_image": both["has_image"],
        "n_attributes": both["attributes"].map(len),
    }
    for c in ["title", "description", "attributes_text", "shop_title"] + [f"{f}_text" for f in DICT_FIELDS]:
        length = both[c].fillna("").str.len()
        cols[f"len_{c}"] = np.log1p(length)
        cols[f"empty_{c}"] = length == 0
    for f in DICT_FIELDS:
        cols[f"n_keys_{f}"] = both[f"{f}_keys"].map(len)
    X = pd.DataFrame(cols).astype(np.float32)
    return X.to_numpy()[: len(train)], X.to_numpy()[len(train) :], list(X.columns)


# the default: one word + one char vectorizer over all text (the joint view)
ALL_TEXT = {"all": {"word": [1, 2], "char": [2, 5]}}
TFIDF_FIELDS = ("all", "title", "description", "dicts", "shop_title")


def field_text(frame: pd.DataFrame, field: str) -> list[str]:
    """The text one TF-IDF field reads: all (title, description, attributes, dicts, shop title),
    title, description, dicts (attributes + the three characteristic dicts) or shop_title."""
    if field == "all":
        return [t + " | " + s for t, s in zip(text_view(frame, "all"), frame["shop_title"].fillna(""))]
    if field == "dicts":
        return _joined(frame, DICT_TEXT).tolist()
    if field in ("title", "description", "shop_title"):
        return frame[field].fillna("").tolist()
    raise DataError(f"config features: unknown TF-IDF field {field!r} (one of {TFIDF_FIELDS})")


def _stemmed(texts: list[str], language: str) -> list[str]:
    """Each text as its lower-cased word tokens (TfidfVectorizer's token pattern) replaced by their
    Snowball stems (nltk; cached per distinct word), joined by spaces."""
    import re

    from nltk.stem.snowball import SnowballStemmer

    if language not in SnowballStemmer.languages:
        raise DataError(
            f"config features: stem {language!r} is not a Snowball language "
            f"(one of {', '.join(SnowballStemmer.languages)})"
        )
    stem, cache, token = SnowballStemmer(language).stem, {}, re.compile(r"(?u)\b\w\w+\b")
    return [
        " ".join(cache[w] if w in cache else cache.setdefault(w, stem(w)) for w in token.findall(text.lower()))
        for text in texts
    ]


def _tfidf_matrix(train: pd.DataFrame, test: pd.DataFrame, opts: dict):
    """TF-IDF blocks side by side, fit on train + test text (no labels).

    `fields` (default ALL_TEXT) maps a field (see field_text) to its vectorizers: `word: [1, 2]`
    (word n-gram range), `char: [2, 5]` (char_wb n-gram range), optional `weight` (scales the
    field's block), `max_features`, `min_df` and `stem` (a Snowball language, e.g. `russian`: the
    word n-grams are read over word stems, so "футболки" and "футболка" are one feature).
    Separate fields let a linear head weigh a title word apart from the same word in a long
    description: on fashion (long care-label HTML) title/dicts/description fields beat the joint
    view by ~0.006 weighted F1; on flipkart the joint view wins.
    """
    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import TfidfVectorizer

    fields = opts.get("fields") or ALL_TEXT
    if not isinstance(fields, dict) or not all(isinstance(v, dict) or v is None for v in fields.values()):
        raise DataError(
            f"config features.sets.{opts.get('name')}.fields: a mapping field -> "
            f"{{word: [1, 2], char: [2, 5], weight: 1.0}}, not {fields!r}"
        )
    both = pd.concat([train, test], ignore_index=True)
    blocks = []
    for field, spec in fields.items():
        texts = field_text(both, field)
        spec = spec or {}
        unknown = set(spec) - {"word", "char", "weight", "max_features", "min_df", "stem"}
        if unknown or not ({"word", "char"} & set(spec)):
            raise DataError(
                f"config features.sets.{opts.get('name')}.fields.{field}: needs word and/or char "
                f"n-gram ranges (unknown keys: {sorted(unknown)})"
            )
        # min_df: one value, or [word, char]
        min_df = spec.get("min_df", 2)
        min_df = min_df if isinstance(min_df, list) else [min_df, min_df]
        if len(min_df) != 2:
            raise DataError(
                f"config features.sets.{opts.get('name')}.fields.{field}.min_df: one number or "
                f"[word, char], not {spec['min_df']!r}"
            )
        min_df = dict(zip(("word", "char_wb"), min_df))
        common = dict(
            sublinear_tf=True,
            dtype=np.float32,
            max_features=int(spec.get("max_features", opts.get("max_features", 200_000))),
        )
        for analyzer, rng in (("word", spec.get("word")), ("char_wb", spec.get("char"))):
            if not rng:
                continue
            vec = TfidfVectorizer(analyzer=analyzer, ngram_range=tuple(rng), min_df=int(min_df[analyzer]), **common)
            words = _stemmed(texts, spec["stem"]) if analyzer == "word" and spec.get("stem") else texts
            try:
                M = vec.fit_transform(words)
            except ValueError:  # empty vocabulary: the field is empty everywhere
                log.warning("features/%s: field %s has no %s n-grams; skipped", opts.get("name"), field, analyzer)
                continue
            blocks.append(M * float(spec.get("weight", 1.0)))
    if not blocks:
        raise DataError(f"features/{opts.get('name')}: no TF-IDF field has any text")
    return hstack(blocks).tocsr().astype(np.float32)


def tfidf_sparse(train: pd.DataFrame, test: pd.DataFrame, opts: dict):
    M = _tfidf_matrix(train, test, opts)
    return M[: len(train)], M[len(train) :], [f"tfidf{i}" for i in range(M.shape[1])]


def tfidf(train: pd.DataFrame, test: pd.DataFrame, opts: dict):
    from sklearn.decomposition import TruncatedSVD

    M = _tfidf_matrix(train, test, opts)
    dim = min(int(opts.get("svd_dim", 256)), M.shape[1] - 1)
    Z = TruncatedSVD(dim, random_state=int(opts.get("seed", 0))).fit_transform(M).astype(np.float32)
    return Z[: len(train)], Z[len(train) :], [f"svd{i}" for i in range(dim)]


_NAVEC = None


def load_navec():
    global _NAVEC
    if _NAVEC is None:
        import natasha
        from navec import Navec

        path = Path(natasha.__file__).parent / "data" / "emb" / "navec_news_v1_1B_250K_300d_100q.tar"
        _NAVEC = Navec.load(str(path))
    return _NAVEC


def navec(train: pd.DataFrame, test: pd.DataFrame, opts: dict):
    from nltk.tokenize import WordPunctTokenizer

    nv, tok = load_navec(), WordPunctTokenizer()
    both = pd.concat([train, test], ignore_index=True)
    keys = both[[f"{f}_keys" for f in DICT_FIELDS]].apply(lambda r: " ".join(" ".join(v) for v in r), axis=1)
    values = both[[f"{f}_text" for f in DICT_FIELDS]].apply(
        lambda r: " ".join(t.split(": ", 1)[-1] for v in r for t in v.split("; ") if t), axis=1
    )
    fields = {"shop_title": both["shop_title"], "title": both["title"], "dict_keys": keys, "dict_values": values}
    blocks, hits, total = [], 0, 0
    for col in fields.values():
        Z = np.zeros((len(both), nv.pq.dim), np.float32)
        for i, text in enumerate(col.fillna("").str.lower()):
            words = [w for w in tok.tokenize(text) if w.isalpha()]
            vecs = [nv[w] for w in words if w in nv]
            hits, total = hits + len(vecs), total + len(words)
            if vecs:
                Z[i] = np.mean(vecs, axis=0)
        blocks.append(Z)
    log.info("navec: %.1f%% of %d words found in the vocabulary", 100 * hits / max(total, 1), total)
    Z = np.hstack(blocks)
    names = [f"{n}_{i}" for n in fields for i in range(nv.pq.dim)]
    return Z[: len(train)], Z[len(train) :], names


def listing(train: pd.DataFrame, test: pd.DataFrame, opts: dict):
    """Where each product sits in the listings, for the `listing` head: [shop code, product-id rank]
    over train + test (no labels). `by` (default shop_id; null: one list for the whole catalogue)
    is the column whose listings are ordered. Both columns are integers below 2^24, exact in
    float32. Sellers list products in batches: on ozon 80% of a shop's id-adjacent pairs share a
    category, against 5% of its random pairs."""
    both = pd.concat([train, test], ignore_index=True)
    if len(both) >= 2**24:
        raise DataError(
            f"features {opts.get('name', 'listing')}: {len(both)} rows; listing ranks are exact in float32 "
            f"below 2^24 rows"
        )
    by = opts.get("by", "shop_id")
    if by is not None and by not in both.columns:
        raise DataError(f"config features.sets.{opts.get('name', 'listing')}.by: no column {by!r} in the data")
    shop = pd.factorize(both[by])[0] if by is not None else np.zeros(len(both), np.int64)
    missing = shop < 0  # no value: a list of its own, so missing values are nobody's neighbours
    shop[missing] = shop.max(initial=-1) + 1 + np.arange(missing.sum())
    rank = np.empty(len(both), np.int64)
    rank[np.argsort(both[ID].to_numpy(), kind="stable")] = np.arange(len(both))
    X = np.stack([shop, rank], 1).astype(np.float32)
    return X[: len(train)], X[len(train) :], ["shop_code", "id_rank"]


CHEAP_FN = {"tabular": tabular, "tfidf": tfidf, "tfidf_sparse": tfidf_sparse, "navec": navec, "listing": listing}


# ---------------------------------------------------------------- backbone sets


def _precision(opts: dict) -> dict:
    """The key's part for `cpu_bf16: auto`: what it means on this host (bf16 or float32 on CPU).
    A value other than true, false or auto is a config error here, before any work."""
    if opts.get("cpu_bf16") in (None, False, True):
        return {}
    from .backbones import use_cpu_bf16

    try:
        return {"cpu_bf16_native": use_cpu_bf16(opts["cpu_bf16"])}
    except ValueError as exc:
        raise DataError(f"config features.sets.{opts.get('name')}.{exc}") from None


def _build(opts: dict):
    """The set's backbone; the torch seed is set first so randomly initialised weights (tests,
    `weights: random`) are the same in every process and fold job."""
    import torch

    from .backbones import build_image_encoder, build_text_encoder

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
    from .backbones import barrier, dist_info
    from .images import image_cache

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
    from .backbones import device

    return int(opts.get("gpu_batch_size", 256) if device().type == "cuda" else opts.get("batch_size", 32))


def _embed_both(enc, train, test, opts, ctx, desc, items_train=None):
    """Embed every train and test row; `items_train`: the train items the caller already has."""
    from .backbones import embed, use_cpu_bf16

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
    from .backbones import StateRows, barrier, dist_info, lower_states, use_cpu_bf16

    key = config_hash(
        {
            "model": opts["model"],
            "view": opts.get("view", "all"),
            "max_length": int(opts.get("max_length", 128)),
            "cpu_bf16": opts.get("cpu_bf16"),
            "lower_layers": n_lower,
            "data": (ctx or {}).get("data_fp"),
            **_precision(opts),
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
            _np_save_atomic(mask_path, mask)
            states = np.load(states_path, mmap_mode="r")
        out[split] = StateRows(states, mask)
    if folder and world > 1 and rank == 0:
        barrier()
    return out["train"], out["test"]


def finetuned_embed(train, test, opts: dict, fold_of_row: np.ndarray, k: int, ctx: dict | None = None):
    """Fold k: fine-tune on rows of the other folds (k=-1: on all rows), embed all train + test.

    Under torchrun every process trains (DDP) and rank 0 alone embeds; the others return None."""
    from .backbones import dist_info, finetune, use_cpu_bf16

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
    classes, y = np.unique(train[TARGET].to_numpy(), return_inverse=True)
    enc = _build(opts)
    if opts["kind"] == "text" and ft.get("train_layers") is not None:
        return _finetune_top_layers(enc, train, test, opts, ft, fit, classes, y, k, ctx)
    items = _items(train, opts, "train", getattr(enc, "size", None), ctx, sync=True)
    rows = np.flatnonzero(fit)
    fit_items = items[rows] if not isinstance(items, list) else [items[i] for i in rows]
    log_ = finetune(
        enc,
        opts["kind"],
        fit_items,
        y[fit],
        len(classes),
        workers=opts.get("workers"),
        cpu_bf16=use_cpu_bf16(opts.get("cpu_bf16")),
        desc=f"{opts['name']} fold{k}",
        **ft,
    )
    if dist_info()[0] > 0:
        return None
    Xtr, Xte, rate = _embed_both(enc, train, test, opts, ctx, f"{opts['name']} fold{k}", items)
    return Xtr, Xte, train[ID].to_numpy()[fit], {"finetune": log_, "rate_per_s": rate, "tta": opts.get("tta")}, enc


def _finetune_top_layers(enc, train, test, opts, ft, fit, classes, y, k, ctx):
    """`finetune.train_layers: n` on a text set: the lower layers stay as pretrained, so their token
    states are read from the label-free cache (_lower_cache), and fold k trains only the top n
    layers and the head on them, then embeds every row from the same cache."""
    from .backbones import TopEncoder, dist_info, embed, finetune, train_top_layers, use_cpu_bf16

    ft = dict(ft)
    n_top = ft.pop("train_layers")
    train_top_layers(enc, n_top)  # checks n; freezes the rest
    n_lower = len(enc.model.encoder.layer) - n_top
    states_train, states_test = _lower_cache(enc, train, test, opts, n_lower, ctx)
    top = TopEncoder(enc, n_top)
    bf16, desc = use_cpu_bf16(opts.get("cpu_bf16")), f"{opts['name']} fold{k}"
    log_ = finetune(
        top,
        "text",
        states_train[np.flatnonzero(fit)],
        y[fit],
        len(classes),
        workers=opts.get("workers"),
        cpu_bf16=bf16,
        desc=desc,
        **ft,
    )
    log_["train_layers"] = n_top
    if dist_info()[0] > 0:
        return None
    bs = _batch_size(opts)
    Xtr, _, rate = embed(top, "text", states_train, bs, desc=f"{desc} train", cpu_bf16=bf16)
    Xte, _, _ = embed(top, "text", states_test, bs, desc=f"{desc} test", cpu_bf16=bf16)
    extra = {"finetune": log_, "rate_per_s": rate, "lower_layers_cached": n_lower, "tta": None}
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


# ---------------------------------------------------------------- stage


def _done(meta_path: Path, key: str) -> bool:
    if not meta_path.is_file():
        return False
    try:
        return json.loads(meta_path.read_text()).get("key") == key
    except json.JSONDecodeError:
        return False


def _save(folder: Path, Xtr, Xte, meta: dict) -> None:
    """train/test as .npy (dense float32) or .npz (scipy sparse); meta.json last marks it finished."""
    from scipy import sparse

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "meta.json").unlink(missing_ok=True)
    for split, X in (("train", Xtr), ("test", Xte)):
        if sparse.issparse(X):
            sparse.save_npz(folder / f"{split}.npz", X.tocsr())
        else:
            np.save(folder / f"{split}.npy", np.ascontiguousarray(X, dtype=np.float32))
    (folder / "meta.json").write_text(json.dumps(meta, indent=2, default=str))


def _load_matrix(folder: Path, split: str):
    from scipy import sparse

    if (folder / f"{split}.npz").is_file():
        return sparse.load_npz(folder / f"{split}.npz").tocsr()
    return np.load(folder / f"{split}.npy")


def feature_sets(cfg: dict) -> dict:
    sets = cfg.get("features", {}).get("sets", {})
    out = {}
    for name, opts in sets.items():
        opts = dict(opts or {}, name=name)
        if not opts.pop("enabled", True):  # `enabled: false`: a base config's set this one drops
            continue
        kind = opts.get("kind")
        if kind not in CHEAP + BACKBONE:
            raise DataError(f"config features.sets.{name}: unknown kind {kind!r} (one of {CHEAP + BACKBONE})")
        out[name] = opts
    return out


def is_per_fold(opts: dict) -> bool:
    return opts["kind"] in BACKBONE and bool(opts.get("finetune"))


def parse_fold(fold) -> int | str | None:
    """`--fold` / FOLD=: None (everything), an int k (>= -1) or "shared" (label-free sets only)."""
    if fold is None or fold == "":
        return None
    if str(fold) == "shared":
        return "shared"
    try:
        k = int(fold)
    except ValueError:
        raise DataError(f"FOLD={fold!r}: a fold number (0..K-1, -1 = the full fit) or 'shared'") from None
    if k < -1:
        raise DataError(f"FOLD={k}: a fold number (0..K-1, -1 = the full fit) or 'shared'")
    return k


def _np_save_atomic(path: Path, arr) -> None:
    """Concurrent FOLD=k jobs write the same id files: write aside, then rename."""
    import os

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npy")
    np.save(tmp, arr)
    os.replace(tmp, path)


def make_features(cfg: dict, only: list[str] | None = None, fold=None) -> dict:
    """Compute every enabled feature set (or `only` these) not already cached; returns {set: seconds}.

    `fold` (FOLD=k, folds as jobs): per-fold (fine-tuned) sets compute only their fold k, into the
    same fold{k}/ folder a full run writes; label-free sets are computed if missing. `fold="shared"`:
    only the label-free sets (run it once before launching FOLD=k jobs in parallel).
    Under torchrun (WORLD_SIZE > 1) rank 0 computes the label-free sets and writes every file; all
    processes fine-tune the per-fold sets together (DDP).
    """
    from .backbones import barrier, dist_info
    from .folds import load_folds

    fold = parse_fold(fold)
    rank, world = dist_info()
    root = Path(cfg["out_dir"]) / "features"
    sets = feature_sets(cfg)
    if only:
        unknown = set(only) - set(sets)
        if unknown:
            raise DataError(f"features: no set named {sorted(unknown)} in the config ({sorted(sets)})")
        sets = {k: v for k, v in sets.items() if k in only}
    data_fp = fingerprint(cfg["data_dir"])
    ctx = {"root": root, "data_fp": data_fp}
    train = test = None
    timings = {}
    keys = {name: config_hash({"set": opts, "data": data_fp, **_precision(opts)}) for name, opts in sets.items()}
    for name, opts in sets.items():
        folder = root / name
        base_key = keys[name]
        per_fold = is_per_fold(opts)
        if per_fold and fold == "shared":
            continue
        if not per_fold and rank > 0:  # torchrun: label-free sets are rank 0's
            continue
        if per_fold:
            folds_path = Path(cfg["out_dir"]) / "folds" / "folds.csv"
            if not folds_path.is_file():
                raise DataError(f"{folds_path}: missing file (run `make folds` first)")
            fold_key = config_hash({"base": base_key, "folds": folds_path.read_text()})
            ks = sorted(set(range(int(cfg.get("folds", {}).get("k", 5)))) | ({-1} if opts.get("full_fit") else set()))
            if isinstance(fold, int):
                if fold not in ks:
                    log.info("features/%s: no fold %d (folds %s)", name, fold, ks)
                    continue
                ks = [fold]
            todo = [k for k in ks if not _done(folder / f"fold{k}" / "meta.json", fold_key)]
        else:
            todo = [] if _done(folder / "meta.json", base_key) else [None]
        if _done(folder / "meta.json", base_key) and is_skipped(folder):
            log.info(
                "features/%s: cached, skipped (%s)", name, json.loads((folder / "meta.json").read_text())["skipped"]
            )
            continue
        if not todo:
            log.info("features/%s: cached, nothing to do%s", name, f" for fold {fold}" if isinstance(fold, int) else "")
            continue
        if train is None:
            train, test = _load_for_features(cfg)
        reason = absent_modality(train, test, opts)
        if rank == 0:
            folder.mkdir(parents=True, exist_ok=True)
            if not reason:
                (folder / "meta.json").unlink(missing_ok=True)  # a per-fold set's old skip marker
                _np_save_atomic(folder / "train_ids.npy", train[ID].to_numpy())
                _np_save_atomic(folder / "test_ids.npy", test[ID].to_numpy())
        if reason:  # nothing to embed: no matrices, heads that list this set run without it
            log.warning("features/%s: skipped, %s", name, reason)
            if rank == 0:
                (folder / "meta.json").write_text(
                    json.dumps(
                        {"key": base_key, "set": opts, "skipped": reason, "data_fingerprint": data_fp},
                        indent=2,
                        default=str,
                    )
                )
            timings[name] = 0.0
            continue
        t0 = time.time()
        if not per_fold:
            if opts["kind"] in CHEAP:
                Xtr, Xte, cols = CHEAP_FN[opts["kind"]](train, test, opts)
                extra = {"columns": cols[:50] + (["..."] if len(cols) > 50 else [])}
            else:
                Xtr, Xte, extra = frozen_embed(train, test, opts, ctx)
            _save(
                folder,
                Xtr,
                Xte,
                {
                    "key": base_key,
                    "set": opts,
                    "data_fingerprint": data_fp,
                    "dim": int(Xtr.shape[1]),
                    "seconds": round(time.time() - t0, 2),
                    **extra,
                },
            )
        else:
            fold_of_row = load_folds(cfg, train)
            for k in todo:
                tk = time.time()
                done = finetuned_embed(train, test, opts, fold_of_row, k, ctx)
                if done is not None:  # rank 0 (or a single process) writes
                    Xtr, Xte, fit_ids, extra, enc = done
                    sub = folder / f"fold{k}"
                    sub.mkdir(parents=True, exist_ok=True)
                    (sub / "meta.json").unlink(missing_ok=True)
                    np.save(sub / "trained_on.npy", fit_ids)
                    if opts.get("save_weights"):
                        import torch

                        torch.save(enc.state_dict(), sub / "encoder.pt")
                    _save(
                        sub,
                        Xtr,
                        Xte,
                        {
                            "key": fold_key,
                            "set": opts,
                            "fold": k,
                            "data_fingerprint": data_fp,
                            "dim": int(Xtr.shape[1]),
                            "seconds": round(time.time() - tk, 2),
                            "world_size": world,
                            **extra,
                        },
                    )
                barrier()
        timings[name] = round(time.time() - t0, 2)
        log.info("features/%s: done in %.1fs", name, timings[name])
    return timings


def absent_modality(train: pd.DataFrame, test: pd.DataFrame, opts: dict) -> str | None:
    """Why an image set should not be computed (too few readable images in a split), or None.

    `min_image_share` (per set, default 0.05): below that share of readable images in train or
    in test the set is skipped: embedding blank rows costs the full model pass and adds nothing.
    """
    if opts["kind"] != "image":
        return None
    need = float(opts.get("min_image_share", 0.05))
    for split, frame in (("train", train), ("test", test)):
        share = float(frame["has_image"].mean()) if len(frame) else 0.0
        if share < need or not frame["has_image"].any():
            return (
                f"{split} has {int(frame['has_image'].sum())} readable images of {len(frame)} rows "
                f"({share:.1%} < min_image_share {need:.0%})"
            )
    return None


def is_skipped(folder: Path) -> bool:
    """A set whose meta.json marks it skipped (absent modality): it has no matrices."""
    meta = folder / "meta.json"
    try:
        return meta.is_file() and bool(json.loads(meta.read_text()).get("skipped"))
    except json.JSONDecodeError:
        return False


def _load_for_features(cfg):
    train, test = load_data(cfg["data_dir"])
    train = apply_image_status(train, check_images(train), "train")
    test = apply_image_status(test, check_images(test), "test")
    return train, test


# ---------------------------------------------------------------- reading (heads)


def load_features(
    cfg: dict, names: list[str], fold: int, train_ids: np.ndarray, test_ids: np.ndarray, blocks: bool = False
):
    """(X_train, X_test) for head fold `fold`: cached sets side by side, per-fold sets from fold{fold}.

    A per-fold set's matrices come from the backbone fine-tuned without fold `fold`, so the rows
    of that fold are embedded by a model that never saw their labels. `blocks=True` returns the
    lists of per-set matrices instead of one stacked matrix.
    """
    root = Path(cfg["out_dir"]) / "features"
    sets = feature_sets(cfg)
    tr, te = [], []
    for name in names:
        if name not in sets:
            raise DataError(f"head uses feature set {name!r}, not in features.sets ({sorted(sets)})")
        folder = root / name
        if is_skipped(folder):
            log.info(
                "features/%s was skipped (%s); the head runs without it",
                name,
                json.loads((folder / "meta.json").read_text())["skipped"],
            )
            continue
        sub = folder / f"fold{fold}" if is_per_fold(sets[name]) else folder
        if not (sub / "meta.json").is_file():
            raise DataError(f"{sub}: features missing or unfinished (run `make features`)")
        ids_tr, ids_te = np.load(folder / "train_ids.npy"), np.load(folder / "test_ids.npy")
        if not (np.array_equal(ids_tr, train_ids) and np.array_equal(ids_te, test_ids)):
            raise DataError(f"{folder}: made for other data (product ids differ); rerun `make features`")
        tr.append(_load_matrix(sub, "train"))
        te.append(_load_matrix(sub, "test"))
    if not tr:
        raise DataError(f"every feature set of {names} was skipped (absent modality): the head has no input")
    if blocks:
        return tr, te
    from scipy import sparse

    if any(sparse.issparse(m) for m in tr):  # any sparse set: the whole matrix stays sparse (CSR)
        return sparse.hstack(tr).tocsr(), sparse.hstack(te).tocsr()
    return np.hstack(tr), np.hstack(te)
