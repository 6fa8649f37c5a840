"""What every procedure of the blend reads, loaded and checked once a stage run: the heads' OOF
files (oof/{head}/) and the data (both splits read once, their text parsed when the stacker, which
needs it, is on), with the labels, the folds, the rows that have an OOF prediction, and the folds'
(choice rows, scored rows) splits that score a procedure held out."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data import ID, TARGET, DataError, load_data
from ..folds import load_folds
from ..heads import head_names
from ..report import available, load_oof
from .weights import fold_splits


@dataclass
class BlendInputs:
    cfg: dict
    heads: list[str]
    runs: list[dict]  # report.load_oof of each head: oof, test, test_folds, classes, ids, metrics
    frames: tuple  # (train, test) as data.load_data gives them
    y: np.ndarray  # class index of each train row, in the heads' class order
    folds: np.ndarray
    has: np.ndarray  # rows with an OOF prediction (validated rows)
    oofs: list[np.ndarray] = field(default_factory=list)  # the heads' OOF probabilities, NaN rows as 0
    splits: list = field(default_factory=list)

    @property
    def bcfg(self) -> dict:
        return self.cfg.get("blend") or {}

    @property
    def ref(self) -> dict:
        return self.runs[0]

    @property
    def classes(self) -> np.ndarray:
        return self.ref["classes"]

    @property
    def seed(self) -> int:
        return int(self.cfg.get("seed", 0))

    @classmethod
    def load(cls, cfg: dict) -> BlendInputs:
        """The heads named in `blend.heads` (default: every enabled head with files), checked to be
        made for the same data, classes and folds as each other and as DATA."""
        bcfg = cfg.get("blend") or {}
        enabled = head_names(cfg)  # enabled heads + their pseudo-label rounds
        heads = bcfg.get("heads") or [n for n in available(cfg["out_dir"]) if n in enabled]
        if not heads:
            raise DataError(f"{Path(cfg['out_dir']) / 'oof'}: no head predictions to blend (run `make train`)")
        runs = [load_oof(cfg["out_dir"], h) for h in heads]
        ref = runs[0]
        for h, r in zip(heads, runs):
            if not (
                np.array_equal(r["classes"], ref["classes"])
                and np.array_equal(r["train_ids"], ref["train_ids"])
                and np.array_equal(r["test_ids"], ref["test_ids"])
            ):
                raise DataError(f"oof/{h}: made for other data than oof/{heads[0]} (rerun `make train`)")
        stacker = bcfg.get("stack", {}) is not False and len(heads) > 1
        train, test = load_data(cfg["data_dir"], parse_text=stacker)
        if not np.array_equal(train[ID].to_numpy(), ref["train_ids"]):
            raise DataError(f"oof/{heads[0]}: made for other data than {cfg['data_dir']} (rerun `make train`)")
        y = np.searchsorted(ref["classes"], train[TARGET].to_numpy())
        folds = load_folds(cfg, train)
        has = ~np.isnan(ref["oof"]).any(1)
        for h, r in zip(heads, runs):
            if not np.array_equal(~np.isnan(r["oof"]).any(1), has):
                raise DataError(f"oof/{h}: OOF rows differ from oof/{heads[0]} (different folds? rerun `make train`)")
        oofs = [np.nan_to_num(r["oof"], copy=False) for r in runs]  # in place: no second n x classes copy
        return cls(cfg, heads, runs, (train, test), y, folds, has, oofs, fold_splits(folds, has))
