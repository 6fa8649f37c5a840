"""`make bench`'s ablation table: what each component adds, from the files (no head is refit).

Rows, each with OOF and test weighted F1 (test only where DATA/solution.csv exists) and seconds
(the heads' fit time plus the procedure's own):
- the best single base head (base = neither a `knn` head nor a pseudo-label round);
- the log-loss-weighted blend (Optuna) of the base heads, with their probabilities as written
  (calibrated where the head has `calibrate: true`), and with the calibration undone (each fold's
  temperature inverted: the calibration on/off pair);
- + the kNN heads; + the pseudo-label rounds (= every head);
- the stacker over every head, without the kNN heads, without the pseudo-label rounds, without the
  listing heads;
- logit adjustment tau = 0.5 and 1 on the best head (post hoc, each fold's own class prior).
Writes {out_dir}/bench/ablation.json and ablation.md.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from . import oof as oof_files
from .data import ID, TARGET, load_split, read_labels
from .folds import load_folds
from .heads import head_names, scores
from .heads.calibrate import class_prior, logit_adjusted, tempered

log = logging.getLogger(__name__)


def _uncalibrated(r, folds):
    """The head's OOF / test probabilities before its in-fold temperatures (test: their geometric mean)."""
    m = r["metrics"]
    if not m.get("calibrate"):
        return r["oof"], r["test"]
    oof = r["oof"].copy()
    for f in m["folds"]:
        rows = folds == f["fold"]
        oof[rows] = tempered(r["oof"][rows], 1.0 / f["temperature"])
    t = float(np.exp(np.mean([np.log(f["temperature"]) for f in m["folds"]])))
    return oof, tempered(r["test"], 1.0 / t)


class Ablation:
    """The files an ablation reads, once: every enabled head's OOF files (their OOF NaN rows as 0),
    the labels, the folds, the test labels where DATA/solution.csv exists; the heads by role (base,
    kNN, pseudo-label rounds); and a row of the table for given probabilities (`row`)."""

    def __init__(self, cfg: dict):
        self.cfg, out_dir = cfg, cfg["out_dir"]
        self.names = oof_files.available(out_dir, head_names(cfg))
        self.runs = {n: oof_files.load(out_dir, n) for n in self.names}
        ref = self.runs[self.names[0]]
        train = load_split(cfg["data_dir"], "train", parse_text=False)
        self.folds, self.classes = load_folds(cfg, train), ref["classes"]
        self.y = np.searchsorted(self.classes, train[TARGET].to_numpy())
        self.has = ~np.isnan(ref["oof"]).any(1)
        for r in self.runs.values():
            r["oof"] = np.nan_to_num(r["oof"])
        sol = Path(cfg["data_dir"]) / "solution.csv"
        self.y_test = None
        if sol.is_file():
            self.y_test = read_labels(sol, self.classes).set_index(ID)[TARGET].reindex(ref["test_ids"]).to_numpy()
        self.kind = {n: self.runs[n]["metrics"].get("kind") for n in self.names}
        self.pseudo = [n for n in self.names if "_pl" in n and n.rsplit("_pl", 1)[1].isdigit()]
        self.knn = [n for n in self.names if self.kind[n] == "knn"]
        self.base = [n for n in self.names if n not in self.pseudo and n not in self.knn]
        self.seed, self.bcfg = int(cfg.get("seed", 0)), cfg.get("blend") or {}
        f1 = {n: scores(self.y[self.has], self.runs[n]["oof"][self.has].argmax(1))["weighted_f1"] for n in self.base}
        self.best = max(f1, key=f1.get)
        self._side = None  # the stacker's row meta-features, read once (a JSON parse of both splits)

    def row(self, label, oof, test, heads, extra_s=0.0) -> dict:
        y, has = self.y, self.has
        res = {
            "variant": label,
            "heads": heads,
            "oof_weighted_f1": round(scores(y[has], oof[has].argmax(1))["weighted_f1"], 4),
            "test_weighted_f1": None
            if self.y_test is None
            else round(scores(self.y_test, self.classes[test.argmax(1)])["weighted_f1"], 4),
            "seconds": round(sum(self.runs[h]["metrics"].get("seconds") or 0 for h in heads) + extra_s, 1),
        }
        log.info("ablation: %-48s OOF %.4f  test %s", label, res["oof_weighted_f1"], res["test_weighted_f1"])
        return res

    def blend(self, label, heads, raw=False) -> dict:
        """The log-loss-weighted blend (Optuna) of `heads`; `raw`: their calibration undone."""
        from .blend import combine, search_weights, subsample

        t0 = time.time()
        trials, max_rows = int(self.bcfg.get("trials", 100)), int(self.bcfg.get("max_rows", 20_000))
        runs = self.runs
        pairs = [_uncalibrated(runs[h], self.folds) if raw else (runs[h]["oof"], runs[h]["test"]) for h in heads]
        idx = subsample(self.has, max_rows, self.seed)
        w = search_weights([p[idx] for p, _ in pairs], self.y[idx], trials, False, "logloss", self.seed)
        oof, test = combine([p for p, _ in pairs], w["weights"]), combine([t for _, t in pairs], w["weights"])
        return self.row(label, oof, test, heads, time.time() - t0)

    def stack(self, label, heads, groups=True) -> dict:
        """The stacker's cross-fit over `heads`, with or without the config's group evidence."""
        from .blend.stack import cross_fit, row_side

        t0 = time.time()
        params = {"seed": self.seed, **(self.bcfg.get("stack") or {})}
        if self._side is None:  # the config's groups, whichever variant comes first
            self._side = row_side(self.cfg, params.get("groups"))
        extra, extra_test, g, g_test = self._side
        if not groups:
            params["groups"], g, g_test = [], None, None
        oof, test, _ = cross_fit(
            [self.runs[h]["oof"] for h in heads],
            [self.runs[h]["test_folds"] for h in heads],
            self.y,
            self.folds,
            self.has,
            len(self.classes),
            params,
            extra,
            extra_test,
            g,
            g_test,
        )
        return self.row(label, np.nan_to_num(oof), test, heads, time.time() - t0)


def _weighted_rows(ab: Ablation) -> list[dict]:
    rows = []
    if len(ab.base) > 1:
        rows.append(ab.blend("weighted blend of the base heads", ab.base))
        if any(ab.runs[h]["metrics"].get("calibrate") for h in ab.base):
            rows.append(ab.blend("  ... calibration off (temperatures undone)", ab.base, raw=True))
    if ab.knn:
        rows.append(ab.blend("weighted blend, + kNN heads", ab.base + ab.knn))
    if ab.pseudo:
        rows.append(ab.blend("weighted blend, + kNN + pseudo-label rounds", ab.base + ab.knn + ab.pseudo))
    return rows


def _stacker_rows(ab: Ablation) -> list[dict]:
    names, scfg = ab.names, ab.bcfg.get("stack", {})
    if scfg is False or len(names) < 2:
        return []
    rows = [ab.stack("stacker over every head", names)]
    if (scfg or {}).get("groups"):
        without = "  ... without the group evidence (" + ", ".join(map(str, scfg["groups"])) + ")"
        rows.append(ab.stack(without, names, groups=False))
    if ab.knn and len(ab.base + ab.pseudo) > 1:
        rows.append(ab.stack("  ... without the kNN heads", ab.base + ab.pseudo))
    if ab.pseudo and len(ab.base + ab.knn) > 1:
        rows.append(ab.stack("  ... without the pseudo-label rounds", ab.base + ab.knn))
    listing = [n for n in names if ab.kind[n] == "listing"]
    if listing and len(names) - len(listing) > 1:
        rows.append(ab.stack("  ... without the listing head", [n for n in names if n not in listing]))
    return rows


def _logit_rows(ab: Ablation) -> list[dict]:
    """The best head logit-adjusted (tau 0.5, 1), each fold's OOF rows with the other folds' prior."""
    from .blend.choose import fold_adjusted, fold_priors

    y, has, best = ab.y, ab.has, ab.best
    priors = fold_priors(y, np.where(has, ab.folds, -1), len(ab.classes))
    rows = []
    for tau in (0.5, 1.0):
        oof = ab.runs[best]["oof"].copy()
        oof[has] = fold_adjusted(oof, ab.folds, priors, tau, has)
        test = logit_adjusted(ab.runs[best]["test"], class_prior(y, len(ab.classes)), tau)
        rows.append(ab.row(f"best head, logit adjustment tau={tau}", oof, test, [best]))
    return rows


def _blend_stage_row(ab: Ablation) -> list[dict]:
    name = ab.bcfg.get("name", "blend")
    if not oof_files.available(ab.cfg["out_dir"], [name]):
        return []
    b = oof_files.load(ab.cfg["out_dir"], name)
    label = f"the blend stage's choice ({b['metrics'].get('chosen')})"
    return [ab.row(label, np.nan_to_num(b["oof"]), b["test"], ab.names, b["metrics"].get("seconds") or 0)]


def _write_ablation(out_dir, rows: list[dict]) -> None:
    out = Path(out_dir) / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.json").write_text(json.dumps(rows, indent=2))
    lines = ["| variant | OOF weighted F1 | test weighted F1 | seconds (heads + procedure) |", "|---|---|---|---|"]
    lines += [
        f"| {r['variant']} | {r['oof_weighted_f1']:.4f} | "
        f"{'-' if r['test_weighted_f1'] is None else format(r['test_weighted_f1'], '.4f')} | {r['seconds']} |"
        for r in rows
    ]
    (out / "ablation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(["ablation (from the OOF files; no head refit):"] + lines))


def run_ablation(cfg: dict) -> list[dict]:
    """The table of the module doc: read the files once, then its rows in order, then write."""
    t_all = time.time()
    ab = Ablation(cfg)
    best = ab.runs[ab.best]
    rows = [ab.row(f"best single base head ({ab.best})", best["oof"], best["test"], [ab.best])]
    rows += _weighted_rows(ab) + _stacker_rows(ab) + _logit_rows(ab) + _blend_stage_row(ab)
    _write_ablation(cfg["out_dir"], rows)
    log.info("ablation in %.0fs", time.time() - t_all)
    return rows
