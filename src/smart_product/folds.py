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
  is ever validated; so does a group that holds all rows of its class (one product listed as
  3 variants is, for validation, a singleton class).
The order in which units are dealt is shuffled by the seed: same seed -> identical folds.csv.

Which groups (`folds.group_col`):
- `auto` (the default): near-duplicate clusters over train + test are found first (dups.py; no
  labels). Grouped by cluster when plain folds would give validation rows far more
  near-duplicates in their training folds than the test rows have in train
  (p_oof_plain - p_test > folds.auto_margin, default 0.05: the test split kept variants apart, so
  plain folds would reward recognising seen listings the test never rewards); plain otherwise
  (a random test split, where near-duplicates do cross it). The choice and why are printed and
  stored in folds/meta.json with the audit;
- a column name (e.g. `title`): rows with the same value share a fold;
- `null`: plain stratified folds.
The audit is computed whatever the choice (unless `folds.dups: false`).
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

    # a unit (group or row) that holds a singleton-class row is never validated, whole; with groups,
    # so is a group that holds every row of a class (a class of one product: validating it would
    # leave no other product of the class to learn from, like a singleton)
    never_group = np.zeros(n_groups, bool)
    never_group[gi[class_n[yi] == 1]] = True
    if groups is not None and n:
        groups_per_class = pd.DataFrame({"c": yi, "g": gi}).groupby("c")["g"].nunique().to_numpy()
        never_group[gi[groups_per_class[yi] == 1]] = True

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


def _column_groups(train: pd.DataFrame, group_col: str, data_dir: Path) -> np.ndarray:
    if group_col not in train.columns:
        raise DataError(
            f"{data_dir / 'train.parquet'}: column '{group_col}': folds.group_col "
            f"names a column the data does not have ({', '.join(train.columns)})"
        )
    values = train[group_col]
    groups = (
        values.astype(str).str.lower().str.strip().where(values.notna())
        if values.dtype == object or pd.api.types.is_string_dtype(values)
        else values
    )
    return groups.to_numpy()


def choose_grouping(dup_audit: dict, margin: float) -> tuple[bool, str]:
    """`auto`: group by near-duplicate cluster when plain folds overstate near-duplicates."""
    p_test, p_plain = dup_audit["p_test"], dup_audit["p_oof_plain"]
    if p_plain - p_test > margin:
        return True, (
            f"plain folds would give {p_plain:.1%} of validation rows a near-duplicate in "
            f"training, the test rows have one in train {p_test:.1%} of the time "
            f"(gap {p_plain - p_test:+.1%} > auto_margin {margin:.0%}): the test split "
            f"keeps near-duplicates apart, so folds keep clusters whole"
        )
    return False, (
        f"plain folds give {p_plain:.1%} of validation rows a near-duplicate in training, "
        f"the test rows {p_test:.1%} (gap {p_plain - p_test:+.1%} <= auto_margin {margin:.0%}): "
        f"near-duplicates cross the test split as often, so plain stratified folds"
    )


def near_duplicate_audit(cfg: dict, train: pd.DataFrame, test: pd.DataFrame, plain: np.ndarray):
    """(audit, grouped folds, train clusters) from the cached clusters; ({}, None, None) when off."""
    from . import dups

    found = dups.load_or_find(cfg, train, test)
    if found is None:
        return {}, None, None
    frame, stats = found
    fcfg = cfg.get("folds", {})
    cluster = frame["cluster"].to_numpy()
    cluster_train, cluster_test = cluster[: len(train)], cluster[len(train) :]
    grouped = assign_folds(train[TARGET].to_numpy(), int(fcfg.get("k", 5)), int(fcfg.get("seed", 42)), cluster_train)
    audit = {
        **dups.audit(cluster_train, cluster_test, {"plain": plain, "grouped": grouped}),
        "clusters": stats,
        "largest": dups.largest_clusters(frame, np.r_[train["title"].to_numpy(), test["title"].to_numpy()]),
    }
    return audit, grouped, cluster_train


def make_folds(cfg: dict) -> Path:
    """Write folds/folds.csv (product_id, fold) and folds/meta.json (+ the near-duplicate audit)."""
    import os

    from . import dups
    from .config import config_hash
    from .data import load_data

    fcfg = cfg.get("folds", {})
    k, seed = int(fcfg.get("k", 5)), int(fcfg.get("seed", 42))
    group_col = fcfg.get("group_col", "auto")
    margin = float(fcfg.get("auto_margin", 0.05))
    data_dir = Path(cfg["data_dir"])
    out = Path(cfg["out_dir"]) / "folds"
    key = config_hash({"folds": fcfg, "data": fingerprint(data_dir)})
    if (out / "folds.csv").is_file() and (out / "meta.json").is_file():  # cached: FOLD=k jobs all pass here
        try:
            old = json.loads((out / "meta.json").read_text())
        except json.JSONDecodeError:
            old = {}
        if old.get("key") == key:
            log.info("folds: cached (same folds config and data), %s", out / "folds.csv")
            for line in audit_lines(old):
                print(line)
            return out / "folds.csv"
    train, test = load_data(data_dir, parse_text=True)
    y = train[TARGET].to_numpy()
    out.mkdir(parents=True, exist_ok=True)

    plain = assign_folds(y, k, seed)
    audit, grouped, cluster_train = near_duplicate_audit(cfg, train, test, plain)
    if group_col == "auto":
        if not audit:
            use_groups, why = False, "folds.dups is off, so `auto` cannot audit: plain stratified folds"
        else:
            use_groups, why = choose_grouping(audit, margin)
        folds = grouped if use_groups else plain
        policy = "grouped by near-duplicate cluster" if use_groups else "plain stratified"
    elif group_col:
        folds = assign_folds(y, k, seed, _column_groups(train, group_col, data_dir))
        policy, why = f"grouped by column {group_col}", "set in the config (folds.group_col)"
    else:
        folds, policy, why = plain, "plain stratified", "set in the config (folds.group_col: null)"
    empty = [f for f in range(k) if not (folds == f).any()]
    if empty:  # every head would be asked to predict no rows for these folds
        raise DataError(
            f"{data_dir / 'train.parquet'}: folds {empty} of folds.k={k} get no validation rows "
            f"({int((folds >= 0).sum())} of {len(folds)} rows can be validated: a class needs 2+ "
            f"products{', in 2+ groups' if folds is not plain else ''}); lower folds.k or add products"
        )
    if audit:
        audit["p_oof_chosen"] = float(dups.has_dup_in_training(cluster_train, folds)[folds >= 0].mean())

    tmp = out / f".folds.csv.{os.getpid()}.tmp"  # written aside, then renamed: readers never see half a file
    pd.DataFrame({ID: train[ID], "fold": folds}).to_csv(tmp, index=False)
    os.replace(tmp, out / "folds.csv")
    summary = fold_summary(train[TARGET], folds, k)
    meta = {
        "key": key,
        "data_dir": str(data_dir),
        "data_fingerprint": fingerprint(data_dir),
        "k": k,
        "seed": seed,
        "group_col": group_col,
        "policy": policy,
        "why": why,
        **summary,
        "dup_audit": audit,
    }
    tmp = out / f".meta.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, out / "meta.json")
    log.info(
        "folds: %d rows in %d folds %s; %d rows never validated (%d singleton classes, and "
        "with groups classes of one group; no OOF prediction); %d classes have fewer than k rows",
        summary["rows"],
        k,
        summary["rows_per_fold"],
        summary["never_validated_rows"],
        summary["singleton_classes"],
        summary["classes_below_k"],
    )
    for line in audit_lines(meta):
        print(line)
    return out / "folds.csv"


def audit_lines(meta: dict) -> list[str]:
    """The near-duplicate audit as Markdown lines (make folds prints them; report and eda show them)."""
    a = meta.get("dup_audit") or {}
    lines = [f"- folds: **{meta.get('policy', '?')}** ({meta.get('group_col')}): {meta.get('why', '')}"]
    if not a:
        return lines
    c = a["clusters"]
    lines += [
        f"- near-duplicates: {c['rows_in_clusters']} of {c['rows']} train+test rows in "
        f"{c['clusters_2plus']} clusters of 2+ (largest {c['largest_cluster']}; "
        f"{c['text_edges']} text + {c['image_edges']} image pairs)",
        f"- test rows with a near-duplicate in train: p_test = {a['p_test']:.1%}; validation rows "
        f"with one in their training folds: p_oof = {a['p_oof_plain']:.1%} plain, "
        f"{a['p_oof_grouped']:.1%} grouped, {a.get('p_oof_chosen', float('nan')):.1%} in these folds",
    ]
    for big in a.get("largest", [])[:3]:
        lines.append(
            f"  - cluster of {big['rows']} ({big['train']} train / {big['test']} test): " + " | ".join(big["titles"])
        )
    return lines


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
        raise DataError(
            f"{path}: made for other data ({len(df)} rows, "
            f"{int(folds.isna().sum())} train ids missing); rerun `make folds` "
            f"with DATA={cfg['data_dir']}"
        )
    return folds.to_numpy().astype(np.int64)
