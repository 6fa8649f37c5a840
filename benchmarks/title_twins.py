"""How often do listings with the same title carry different categories? A floor under the error
of any model that reads the title alone.

    python benchmarks/title_twins.py --data ../shared/data/ozon [--out runs/ozon]

Titles are compared in lower case with spaces collapsed. For every train row whose title is shared
with other train rows ("twins"), its category is predicted by the majority category of its twins
(leave one out; ties go to the smallest category id); the accuracy of that rule is printed, with
the same for twins from the same shop. With --out (a finished run), the blend's OOF accuracy on
the rows with and without a twin is printed beside it. The labels are only read, never used to
choose anything.
"""
import argparse
import json

import numpy as np
import pandas as pd

from smart_product.data import ID, TARGET, load_split


def twin_majority(keys: pd.Series, y: np.ndarray) -> np.ndarray:
    """keys: a Series indexed by row position (missing rows dropped). Per row: 1.0 if the majority label of the other rows with its key equals its label, 0.0 if
    not, NaN when no other row has its key."""
    out = np.full(len(y), np.nan)
    sub = keys[keys.duplicated(keep=False)]  # keys' index: row positions
    for pos in sub.groupby(sub).indices.values():
        idx = sub.index.to_numpy()[pos]
        ys = y[idx]
        vals, inv = np.unique(ys, return_inverse=True)
        counts = np.bincount(inv, minlength=len(vals))
        for j, i in enumerate(idx):
            c = counts.copy()
            c[inv[j]] -= 1
            out[i] = vals[c.argmax()] == ys[j]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", help="a finished run folder (oof/blend/) to compare with")
    a = ap.parse_args()
    train = load_split(a.data, "train")
    title = train["title"].fillna("").astype(str).str.lower().str.replace(r"\s+", " ", regex=True).str.strip()
    title = title.where(title != "").reset_index(drop=True)
    y = train[TARGET].to_numpy()
    any_twin = twin_majority(title.dropna(), y)
    shop_twin = twin_majority((title + "\x1f" + train["shop_id"].astype(str).reset_index(drop=True)).dropna(), y)
    has_twin = ~np.isnan(any_twin)
    res = {"rows": len(y), "rows_with_a_title_twin": int(has_twin.sum()),
           "twin_majority_accuracy": round(float(np.nanmean(any_twin)), 4) if has_twin.any() else None,
           "rows_with_a_same_shop_twin": int((~np.isnan(shop_twin)).sum()),
           "same_shop_twin_majority_accuracy": round(float(np.nanmean(shop_twin)), 4)
           if (~np.isnan(shop_twin)).any() else None}
    if a.out:
        from smart_product.blend import load_oof

        r = load_oof(a.out, "blend")
        pred = pd.Series(r["classes"][np.nan_to_num(r["oof"]).argmax(1)], index=r["train_ids"])
        ok = pd.Series(~np.isnan(r["oof"]).any(1), index=r["train_ids"])
        ids = train[ID].to_numpy()
        valid = ok.reindex(ids, fill_value=False).to_numpy()
        right = pred.reindex(ids).to_numpy() == y
        for name, m in (("blend_oof_accuracy_twins", valid & has_twin), ("blend_oof_accuracy_others", valid & ~has_twin)):
            res[name] = round(float(right[m].mean()), 4) if m.any() else None
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
