"""The label-free tabular sets: `tabular` (rating, sale, shop frequency, text lengths, flags,
counts) and `listing` (shop code + product-id rank, the listing head's input)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..data import DICT_FIELDS, ID, DataError


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
