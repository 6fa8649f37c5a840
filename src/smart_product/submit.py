"""Submission files: write, validate, score against a solution file (local leaderboard).

    submissions/{name}.csv       product_id, category_id
    submissions/{name}.parquet   product_id, predicted_category_id   (the competition's format)

`validate_submission` runs on every write and as `make validate-sub SUB=...`: every test id
exactly once, no extra ids, only category ids seen in train.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from .data import ID, TARGET, DataError, label_array, load_split, read_labels

log = logging.getLogger(__name__)
PRED = "predicted_category_id"


def read_submission(path) -> pd.DataFrame:
    """A submission as (product_id, category_id), from our CSV or the competition parquet."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: missing file")
    df = pd.read_parquet(path) if path.suffix == ".parquet" else read_labels(path)
    if PRED in df.columns and TARGET not in df.columns:
        df = df.rename(columns={PRED: TARGET})
    missing = [c for c in (ID, TARGET) if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing} (expected product_id and category_id or {PRED})")
    return df[[ID, TARGET]]


def validate_submission(sub: pd.DataFrame, test_ids, train_classes, where: str = "submission") -> None:
    problems = []
    ids = sub[ID].to_numpy()
    dup = pd.unique(ids[pd.Series(ids).duplicated().to_numpy()])
    if len(dup):
        problems.append(f"{where}: {len(dup)} product_id(s) appear more than once, e.g. {dup[:5].tolist()}")
    missing = np.setdiff1d(test_ids, ids)
    if len(missing):
        problems.append(f"{where}: {len(missing)} test product_id(s) missing, e.g. {missing[:5].tolist()}")
    extra = np.setdiff1d(ids, test_ids)
    if len(extra):
        problems.append(f"{where}: {len(extra)} product_id(s) not in test.parquet, e.g. {extra[:5].tolist()}")
    if sub[TARGET].isna().any():
        problems.append(f"{where}: {int(sub[TARGET].isna().sum())} empty category_id(s)")
    unknown = np.setdiff1d(sub[TARGET].dropna().to_numpy(), train_classes)
    if len(unknown):
        problems.append(f"{where}: {len(unknown)} category_id(s) never seen in train, e.g. {unknown[:5].tolist()}")
    if problems:
        raise DataError("\n".join(problems))


def submission_path(cfg: dict, suffix: str = ".parquet") -> Path:
    """The run's submission file: OUT/submissions/{blend name}.parquet (the upload) or .csv."""
    return Path(cfg["out_dir"]) / "submissions" / f"{(cfg.get('blend') or {}).get('name', 'blend')}{suffix}"


def write_submission(out_dir, name: str, test_ids, pred_classes, data_dir, frames=None) -> Path:
    """Write submissions/{name}.csv and .parquet after validating against the data (`frames`: its
    (train, test) frames, when the caller has read them)."""
    sub = pd.DataFrame({ID: np.asarray(test_ids).astype(np.int64), TARGET: label_array(pred_classes)})
    check_against_data(sub, data_dir, f"submission {name}", frames)
    folder = Path(out_dir) / "submissions"
    folder.mkdir(parents=True, exist_ok=True)
    sub.to_csv(folder / f"{name}.csv", index=False)
    sub.rename(columns={TARGET: PRED}).to_parquet(folder / f"{name}.parquet", index=False)
    log.info(
        "submission: %s (%d rows, %d distinct categories) + .parquet",
        folder / f"{name}.csv",
        len(sub),
        sub[TARGET].nunique(),
    )
    return folder / f"{name}.csv"


def check_against_data(sub: pd.DataFrame, data_dir, where: str, frames=None) -> None:
    if frames is None:
        frames = load_split(data_dir, "train", parse_text=False), load_split(data_dir, "test", parse_text=False)
    train, test = frames
    validate_submission(sub, test[ID].to_numpy(), np.unique(train[TARGET]), where)


def score_submission(sub_path, solution_path) -> dict:
    """Local leaderboard: weighted F1, macro F1, accuracy of a submission against a solution file."""
    from .heads import scores

    sub = read_submission(sub_path)
    sol = read_submission(solution_path)
    validate_submission(
        sub, sol[ID].to_numpy(), np.unique(sol[TARGET]).tolist() + sub[TARGET].unique().tolist(), str(sub_path)
    )
    merged = sol.merge(sub, on=ID, suffixes=("_true", "_pred"))
    return scores(merged[f"{TARGET}_true"].to_numpy(), merged[f"{TARGET}_pred"].to_numpy())
