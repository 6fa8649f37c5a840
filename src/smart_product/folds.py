"""Stage `folds`: singleton-aware stratified K-fold, optionally keeping groups whole.

Policy (also in the README):
- a class with >= K rows has rows in every validation fold (its rows are dealt round-robin over
  the folds that hold the fewest of that class, smallest fold first);
- a class with 2..K-1 rows has each row in a different fold, so whenever one of its rows is
  validated, all its other rows are in training;
- a class with one row (singleton) gets fold -1: in training for every fold, never validated,
  no OOF prediction. Reports count these rows;
- with a group column (StratifiedGroupKFold semantics) a group is one unit: all its rows share a
  fold. A group that holds a singleton row goes to -1 whole, so no variant of a training-only row
  is ever validated.
The order in which units are dealt is shuffled by the seed: same seed -> identical folds.csv.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from .data import ID, TARGET, DataError, fingerprint

log = logging.getLogger(__name__)
NEVER = -1


def assign_folds(y, k: int = 5, seed: int = 42, groups=None) -> np.ndarray:
    """Fold id per row (0..k-1, or -1 for rows that are never validated)."""
    y = np.asarray(y)
    if k < 2:
        raise ValueError(f"folds.k must be >= 2, got {k}")
    n = len(y)
    classes, yi, class_n = np.unique(y, return_inverse=True, return_counts=True)
    folds = np.full(n, NEVER, dtype=np.int64)
    if groups is None:
        gi = np.arange(n)
    else:
        groups = np.asarray(groups)
        if len(groups) != n:
            raise ValueError("groups must have one value per row")
        gi = pd.factorize(pd.Series(groups).replace("", None))[0]
        lone = gi < 0  # a row without a group value is a group of its own
        gi[lone] = gi.max(initial=-1) + 1 + np.arange(lone.sum())
    n_groups = gi.max() + 1 if n else 0

    # a unit (group or row) that holds a singleton-class row is never validated, whole
    never_group = np.zeros(n_groups, bool)
    never_group[gi[class_n[yi] == 1]] = True

    # rows of each unit, and the class counts inside it
    order = np.argsort(gi, kind="stable")
    unit_rows = np.split(order, np.flatnonzero(np.diff(gi[order])) + 1) if n else []

    rng = np.random.default_rng(seed)
    units = [u for u in rng.permutation(len(unit_rows)) if not never_group[gi[unit_rows[u][0]]]]
    # rarest classes first (their spread matters most), bigger units first among equals
    rarest = np.array([class_n[yi[unit_rows[u]]].min() for u in units], dtype=np.int64)
    size = np.array([len(unit_rows[u]) for u in units], dtype=np.int64)
    units = [units[i] for i in np.lexsort((-size, rarest))]

    fold_class = np.zeros((k, len(classes)), dtype=np.int64)
    fold_size = np.zeros(k, dtype=np.int64)
    for u in units:
        rows = unit_rows[u]
        cls, cnt = np.unique(yi[rows], return_counts=True)
        # share of each of the unit's classes already in each fold, weighted by the unit's rows
        load = (fold_class[:, cls] * cnt / class_n[cls]).sum(axis=1)
        f = np.lexsort((np.arange(k), fold_size, load))[0]
        folds[rows] = f
        fold_class[f, cls] += cnt
        fold_size[f] += len(rows)
    return folds


def fold_summary(y, folds: np.ndarray, k: int) -> dict:
    y = np.asarray(y)
    counts = pd.Series(y).value_counts()
    never = folds == NEVER
    return {
        "rows": int(len(y)),
        "k": int(k),
        "rows_per_fold": {int(f): int((folds == f).sum()) for f in range(k)},
        "never_validated_rows": int(never.sum()),
        "singleton_classes": int((counts == 1).sum()),
        "classes_below_k": int(((counts > 1) & (counts < k)).sum()),
        "classes": int(len(counts)),
    }


def make_folds(cfg: dict) -> Path:
    """Write folds/folds.csv (product_id, fold) and folds/meta.json for the config's data."""
    from .data import load_split

    fcfg = cfg.get("folds", {})
    k, seed, group_col = int(fcfg.get("k", 5)), int(fcfg.get("seed", 42)), fcfg.get("group_col")
    data_dir = Path(cfg["data_dir"])
    need_text = bool(group_col) and group_col not in ("shop_id", "shop_title")
    train = load_split(data_dir, "train", parse_text=need_text)
    groups = None
    if group_col:
        if group_col not in train.columns:
            raise DataError(f"{data_dir / 'train.parquet'}: column '{group_col}': folds.group_col "
                            f"names a column the data does not have ({', '.join(train.columns)})")
        values = train[group_col]
        groups = (values.astype(str).str.lower().str.strip().where(values.notna())
                  if values.dtype == object or pd.api.types.is_string_dtype(values) else values)
        groups = groups.to_numpy()
    folds = assign_folds(train[TARGET].to_numpy(), k, seed, groups)

    out = Path(cfg["out_dir"]) / "folds"
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({ID: train[ID], "fold": folds}).to_csv(out / "folds.csv", index=False)
    summary = fold_summary(train[TARGET], folds, k)
    meta = {"data_dir": str(data_dir), "data_fingerprint": fingerprint(data_dir), "k": k,
            "seed": seed, "group_col": group_col, **summary}
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    log.info("folds: %d rows in %d folds %s; %d rows never validated (%d singleton classes, "
             "no OOF prediction); %d classes have fewer than k rows",
             summary["rows"], k, summary["rows_per_fold"], summary["never_validated_rows"],
             summary["singleton_classes"], summary["classes_below_k"])
    return out / "folds.csv"


def load_folds(cfg: dict, train: pd.DataFrame) -> np.ndarray:
    """Fold per train row, in train's row order; errors if folds.csv was made for other data."""
    path = Path(cfg["out_dir"]) / "folds" / "folds.csv"
    if not path.is_file():
        raise DataError(f"{path}: missing file (run `make folds` first)")
    df = pd.read_csv(path)
    if list(df.columns) != [ID, "fold"]:
        raise DataError(f"{path}: expected columns product_id, fold; got {list(df.columns)}")
    folds = df.set_index(ID)["fold"].reindex(train[ID])
    if folds.isna().any() or len(df) != len(train):
        raise DataError(f"{path}: made for other data ({len(df)} rows, "
                        f"{int(folds.isna().sum())} train ids missing); rerun `make folds` "
                        f"with DATA={cfg['data_dir']}")
    return folds.to_numpy().astype(np.int64)
