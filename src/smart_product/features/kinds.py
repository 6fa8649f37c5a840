"""The kinds of feature set by name (`kind:` in a config's features.sets) and the config's sets."""

from __future__ import annotations

from ..data import DataError
from .tabular import listing, tabular
from .tfidf import tfidf, tfidf_sparse
from .wordvec import navec

CHEAP_FN = {"tabular": tabular, "tfidf": tfidf, "tfidf_sparse": tfidf_sparse, "navec": navec, "listing": listing}
CHEAP = tuple(CHEAP_FN)  # label-free sets computed once
BACKBONE = ("image", "text")
FUSION = ("fusion",)  # one model per fold over the photo, the text and cheap sets (fusion.py)


def feature_sets(cfg: dict) -> dict:
    sets = cfg.get("features", {}).get("sets", {})
    out = {}
    for name, opts in sets.items():
        opts = dict(opts or {}, name=name)
        if not opts.pop("enabled", True):  # `enabled: false`: a base config's set this one drops
            continue
        kind = opts.get("kind")
        if kind not in CHEAP + BACKBONE + FUSION:
            raise DataError(
                f"config features.sets.{name}: unknown kind {kind!r} (one of {CHEAP + BACKBONE + FUSION})"
            )
        out[name] = opts
    return out


def is_per_fold(opts: dict) -> bool:
    return opts["kind"] in FUSION or (opts["kind"] in BACKBONE and bool(opts.get("finetune")))
