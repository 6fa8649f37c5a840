"""The files of a feature set: features/{set}/train.npy|npz, test.*, train_ids.npy, test_ids.npy,
meta.json (written last: its key marks the set finished), fold{k}/ for per-fold sets; and
`load_features`, how a head reads them."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ..data import DataError
from .kinds import feature_sets, is_per_fold

log = logging.getLogger(__name__)


def is_done(meta_path: Path, key: str) -> bool:
    if not meta_path.is_file():
        return False
    try:
        return json.loads(meta_path.read_text()).get("key") == key
    except json.JSONDecodeError:
        return False


def save_matrices(folder: Path, Xtr, Xte, meta: dict) -> None:
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


def np_save_atomic(path: Path, arr) -> None:
    """Concurrent FOLD=k jobs write the same id files: write aside, then rename."""
    import os

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npy")
    np.save(tmp, arr)
    os.replace(tmp, path)



def is_skipped(folder: Path) -> bool:
    """A set whose meta.json marks it skipped (absent modality): it has no matrices."""
    meta = folder / "meta.json"
    try:
        return meta.is_file() and bool(json.loads(meta.read_text()).get("skipped"))
    except json.JSONDecodeError:
        return False



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


def load_class_logits(cfg: dict, names: list[str], fold: int, train_ids, test_ids, classes: np.ndarray):
    """(logits_train, logits_test) for head fold `fold`: the classifier fine-tuned with the set's
    backbone for that fold (its saved class head, fold{fold}/class_head.npz) applied to that fold's
    embeddings. Fold k's rows get the logits of a classifier that never saw their labels; the
    other rows' logits are in-sample (the `finetuned` head never fits on them)."""
    sets = feature_sets(cfg)
    if len(names) != 1 or names[0] not in sets or not is_per_fold(sets[names[0]]):
        raise DataError(f"a `finetuned` head reads one fine-tuned (per-fold) feature set, not {names}")
    name = names[0]
    path = Path(cfg["out_dir"]) / "features" / name / f"fold{fold}" / "class_head.npz"
    if not path.is_file():
        raise DataError(
            f"{path}: missing (features made before the class head was kept); remove "
            f"features/{name}/ and rerun `make features`"
        )
    head = np.load(path)
    if not np.array_equal(head["classes"], classes):
        raise DataError(f"{path}: made for other classes than the train split's; rerun `make features`")
    Xtr, Xte = load_features(cfg, names, fold, train_ids, test_ids)
    W, b = head["weight"], head["bias"]
    return Xtr @ W.T + b, Xte @ W.T + b

