"""The oof/{name}/ folder: the one owner of its format. A head (heads/loop.py) and a blend
(blend/write.py) write it here; the blend, the report, pseudo-label rounds, the ablation and the
bench read it here.

    oof/{name}/oof.npy         n_train x n_classes float32, the out-of-fold probabilities
                               (NaN rows: never validated, fold -1)
               test.npy        n_test x n_classes, the test probabilities
               classes.npy     the category ids, the column order
               train_ids.npy   product ids, the row order of oof.npy; test_ids.npy: of test.npy
               test_folds.npy  K x n_test x n_classes float16, each fold model's test probabilities
                               (heads; the stacker and pseudo-label rounds read them)
               config.json     what the head ran with (heads)
               metrics.json    per fold and overall; written last: a folder without it is unfinished

A folder is made for one data set: its ids and classes are checked against DATA before any use
(`check_data`), and the error names the folder and the command that remakes it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .data import DataError

ARRAYS = ("oof", "test", "classes", "train_ids", "test_ids")


def folder(out_dir, name: str) -> Path:
    return Path(out_dir) / "oof" / name


def write(
    out_dir, name: str, arrays: dict, metrics: dict, test_folds=None, config: dict | None = None, extra_json=None
) -> Path:
    """Write oof/{name}/: the arrays of ARRAYS (+ test_folds, config.json, {stem}.json of `extra_json`),
    metrics.json last."""
    missing = [a for a in ARRAYS if a not in arrays]
    if missing:
        raise ValueError(f"oof.write({name!r}): missing arrays {missing}")
    out = folder(out_dir, name)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").unlink(missing_ok=True)  # written last: marks the folder finished
    for a in ARRAYS:
        np.save(out / f"{a}.npy", arrays[a])
    if test_folds is not None:
        np.save(out / "test_folds.npy", test_folds)
    if config is not None:
        (out / "config.json").write_text(json.dumps(config, indent=2, default=str))
    for stem, obj in (extra_json or {}).items():  # e.g. the blend's weights.json
        (out / f"{stem}.json").write_text(json.dumps(obj, indent=2, default=str))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    return out


def read_metrics(out_dir, name: str) -> dict | None:
    """The metrics of a finished folder (metrics.json and oof.npy present), else None."""
    f = folder(out_dir, name)
    if not ((f / "metrics.json").is_file() and (f / "oof.npy").is_file()):
        return None
    try:
        return json.loads((f / "metrics.json").read_text())
    except json.JSONDecodeError:
        return None


def available(out_dir, names: list[str] | None = None) -> list[str]:
    """The finished folders: of `names` in their order, or every one under oof/ (sorted)."""
    root = Path(out_dir) / "oof"
    if names is None:
        names = sorted(p.name for p in root.glob("*")) if root.is_dir() else []
    return [n for n in names if read_metrics(out_dir, n) is not None]


def load(out_dir, name: str) -> dict:
    """One finished folder as arrays: oof, test, classes, train_ids, test_ids, test_folds (memory-mapped;
    None where the folder has none) and metrics."""
    f = folder(out_dir, name)
    missing = [a + ".npy" for a in ARRAYS if not (f / f"{a}.npy").is_file()]
    metrics = read_metrics(out_dir, name)
    if missing or metrics is None:
        what = ", ".join(missing) if missing else "metrics.json (an unfinished run)"
        raise DataError(f"{f}: missing {what} (run `make train`)")
    out = {a: np.load(f / f"{a}.npy") for a in ARRAYS}
    if out["oof"].shape != (len(out["train_ids"]), len(out["classes"])):
        raise DataError(f"{f}/oof.npy: shape {out['oof'].shape} does not match ids x classes")
    out["metrics"] = metrics
    tf = f / "test_folds.npy"
    out["test_folds"] = np.load(tf, mmap_mode="r") if tf.is_file() else None
    return out


def made_for(run: dict, train_ids, test_ids, classes=None) -> str | None:
    """Why a loaded folder was made for other data than these ids (and classes), or None."""
    if not np.array_equal(run["train_ids"], train_ids):
        return f"its {len(run['train_ids'])} train ids are not the data's {len(train_ids)}"
    if not np.array_equal(run["test_ids"], test_ids):
        return f"its {len(run['test_ids'])} test ids are not the data's {len(test_ids)}"
    if classes is not None and not np.array_equal(run["classes"], classes):
        return f"its {len(run['classes'])} classes are not the data's {len(classes)}"
    return None


def stale_error(cfg: dict, name: str, why: str, run: dict | None = None) -> DataError:
    """The one-line error for a folder made for other data, with the command that remakes it."""
    from .config import make_command

    target = "blend" if run is not None and run["metrics"].get("kind") == "blend" else "train"
    return DataError(
        f"{folder(cfg['out_dir'], name)}: made for other data than {cfg['data_dir']} ({why}); "
        f"`{make_command(cfg, target)}` remakes it"
    )


def check_data(cfg: dict, runs: dict, train_ids, test_ids, classes=None) -> None:
    """Every loaded folder of `runs` ({name: run}) made for these ids (and classes), else a stale_error."""
    for name, run in runs.items():
        why = made_for(run, train_ids, test_ids, classes)
        if why:
            raise stale_error(cfg, name, why, run)


def test_folds(out_dir, name: str, fold: int | None = None) -> np.ndarray:
    """A head's per-fold test probabilities, K x n_test x C (or 1 x ... for `fold`): from test_folds.npy,
    or for one fold from a FOLD=k job's fold{k}/test.npy (rounded to float16 as test_folds.npy stores
    it, so both paths give the same values)."""
    f = folder(out_dir, name)
    if fold is not None and (f / f"fold{fold}" / "test.npy").is_file():
        return np.load(f / f"fold{fold}" / "test.npy").astype(np.float16).astype(np.float32)[None]
    path = f / "test_folds.npy"
    if not path.is_file():
        raise DataError(f"{path}: missing (pseudo-label sources keep each fold model's test probabilities)")
    P = np.load(path, mmap_mode="r")
    return np.asarray(P if fold is None else P[fold : fold + 1]).astype(np.float32)
