"""What every procedure of the blend reads, loaded and checked once a stage run: the heads' OOF
files (oof/{head}/) and the data (both splits read once, their text parsed when the stacker, which
needs it, is on), with the labels, the folds, the rows that have an OOF prediction, and the folds'
(choice rows, scored rows) splits that score a procedure held out."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from .. import oof as oof_files
from ..config import make_command
from ..data import ID, TARGET, DataError, label_array, load_data
from ..folds import load_folds
from ..heads import head_names
from .weights import fold_splits


@dataclass
class BlendInputs:
    cfg: dict
    heads: list[str]
    runs: list[dict]  # oof.load of each head: oof, test, test_folds, classes, ids, metrics
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

    @cached_property
    def head_shifts(self) -> dict:
        """{head: its estimated OOF - test accuracy drop and agreement with the others} (shift.py)."""
        from .shift import head_shifts

        return head_shifts(self.heads, self.oofs, self.runs, self.y, self.folds, self.has)

    @property
    def seed(self) -> int:
        return int(self.cfg.get("seed", 0))

    @classmethod
    def load(cls, cfg: dict) -> BlendInputs:
        """The heads named in `blend.heads` (default: every enabled head with files), checked to be
        made for the same data, classes and folds as each other and as DATA."""
        bcfg = cfg.get("blend") or {}
        enabled = head_names(cfg)  # enabled heads + their pseudo-label rounds: no other folder is read
        heads = oof_files.available(cfg["out_dir"], bcfg.get("heads") or sorted(enabled))  # by name, as ever
        if not heads:
            raise DataError(
                f"{Path(cfg['out_dir']) / 'oof'}: no predictions of the config's heads {enabled} to blend "
                f"(`{make_command(cfg, 'train')}` makes them)"
            )
        runs = [oof_files.load(cfg["out_dir"], h) for h in heads]
        ref = runs[0]
        stacker = bcfg.get("stack", {}) is not False and len(heads) > 1
        train, test = load_data(cfg["data_dir"], parse_text=stacker)
        classes = np.unique(label_array(train[TARGET]))
        oof_files.check_data(cfg, dict(zip(heads, runs)), train[ID].to_numpy(), test[ID].to_numpy(), classes)
        y = np.searchsorted(ref["classes"], train[TARGET].to_numpy())
        folds = load_folds(cfg, train)
        has = ~np.isnan(ref["oof"]).any(1)
        for h, r in zip(heads, runs):
            if not np.array_equal(~np.isnan(r["oof"]).any(1), has):
                raise oof_files.stale_error(cfg, h, f"its OOF rows differ from oof/{heads[0]}'s: other folds")
        oofs = [np.nan_to_num(r["oof"], copy=False) for r in runs]  # in place: no second n x classes copy
        return cls(cfg, heads, runs, (train, test), y, folds, has, oofs, fold_splits(folds, has))
