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

from .data import ID, TARGET, load_split, read_labels
from .folds import load_folds
from .heads import head_names, scores
from .heads.calibrate import class_prior, fold_adjusted, fold_priors, logit_adjusted, tempered
from .report import available, load_oof

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


def run_ablation(cfg: dict) -> list[dict]:
    from .blend import combine, search_weights, subsample
    from .stack import cross_fit, row_side

    t_all = time.time()
    out_dir = cfg["out_dir"]
    names = [n for n in available(out_dir) if n in head_names(cfg)]
    runs = {n: load_oof(out_dir, n) for n in names}
    ref = runs[names[0]]
    train = load_split(cfg["data_dir"], "train", parse_text=False)
    folds = load_folds(cfg, train)
    classes = ref["classes"]
    y = np.searchsorted(classes, train[TARGET].to_numpy())
    has = ~np.isnan(ref["oof"]).any(1)
    for r in runs.values():
        r["oof"] = np.nan_to_num(r["oof"])
    sol = Path(cfg["data_dir"]) / "solution.csv"
    y_test = None
    if sol.is_file():
        s = read_labels(sol, classes).set_index(ID)[TARGET]
        y_test = s.reindex(ref["test_ids"]).to_numpy()

    def row(label, oof, test, heads, extra_s=0.0):
        res = {
            "variant": label,
            "heads": heads,
            "oof_weighted_f1": round(scores(y[has], oof[has].argmax(1))["weighted_f1"], 4),
            "test_weighted_f1": None
            if y_test is None
            else round(scores(y_test, classes[test.argmax(1)])["weighted_f1"], 4),
            "seconds": round(sum(runs[h]["metrics"].get("seconds") or 0 for h in heads) + extra_s, 1),
        }
        log.info("ablation: %-48s OOF %.4f  test %s", label, res["oof_weighted_f1"], res["test_weighted_f1"])
        return res

    kind = {n: runs[n]["metrics"].get("kind") for n in names}
    pseudo = [n for n in names if "_pl" in n and n.rsplit("_pl", 1)[1].isdigit()]
    knn = [n for n in names if kind[n] == "knn"]
    base = [n for n in names if n not in pseudo and n not in knn]
    seed, bcfg = int(cfg.get("seed", 0)), cfg.get("blend") or {}
    trials, max_rows = int(bcfg.get("trials", 100)), int(bcfg.get("max_rows", 20_000))
    rows = []
    f1 = {n: scores(y[has], runs[n]["oof"][has].argmax(1))["weighted_f1"] for n in base}
    best = max(f1, key=f1.get)
    rows.append(row(f"best single base head ({best})", runs[best]["oof"], runs[best]["test"], [best]))

    def blend(label, heads, raw=False):
        t0 = time.time()
        pairs = [_uncalibrated(runs[h], folds) if raw else (runs[h]["oof"], runs[h]["test"]) for h in heads]
        idx = subsample(has, max_rows, seed)
        w = search_weights([p[idx] for p, _ in pairs], y[idx], trials, False, "logloss", seed)
        return row(
            label,
            combine([p for p, _ in pairs], w["weights"]),
            combine([t for _, t in pairs], w["weights"]),
            heads,
            time.time() - t0,
        )

    extras = []  # the row meta-features, read once (a JSON parse of both splits)

    def stack(label, heads, groups=True):
        t0 = time.time()
        params = {"seed": seed, **(bcfg.get("stack") or {})}
        if not extras:  # the config's groups, whichever variant comes first
            extras.extend(row_side(cfg, params.get("groups")))
        if not groups:
            params["groups"] = []
        extra, extra_test, g, g_test = extras
        if not groups:
            g = g_test = None
        oof, test, _ = cross_fit(
            [runs[h]["oof"] for h in heads],
            [runs[h]["test_folds"] for h in heads],
            y,
            folds,
            has,
            len(classes),
            params,
            extra,
            extra_test,
            g,
            g_test,
        )
        return row(label, np.nan_to_num(oof), test, heads, time.time() - t0)

    if len(base) > 1:
        rows.append(blend("weighted blend of the base heads", base))
        if any(runs[h]["metrics"].get("calibrate") for h in base):
            rows.append(blend("  ... calibration off (temperatures undone)", base, raw=True))
    if knn:
        rows.append(blend("weighted blend, + kNN heads", base + knn))
    if pseudo:
        rows.append(blend("weighted blend, + kNN + pseudo-label rounds", base + knn + pseudo))
    if bcfg.get("stack", {}) is not False and len(names) > 1:
        rows.append(stack("stacker over every head", names))
        if (bcfg.get("stack") or {}).get("groups"):
            rows.append(
                stack(
                    "  ... without the group evidence (" + ", ".join(map(str, bcfg["stack"]["groups"])) + ")",
                    names,
                    groups=False,
                )
            )
        if knn and len(base + pseudo) > 1:
            rows.append(stack("  ... without the kNN heads", base + pseudo))
        if pseudo and len(base + knn) > 1:
            rows.append(stack("  ... without the pseudo-label rounds", base + knn))
        listing = [n for n in names if kind[n] == "listing"]
        if listing and len(names) - len(listing) > 1:
            rows.append(stack("  ... without the listing head", [n for n in names if n not in listing]))
    priors = fold_priors(y, np.where(has, folds, -1), len(classes))
    for tau in (0.5, 1.0):
        oof = runs[best]["oof"].copy()
        oof[has] = fold_adjusted(oof, folds, priors, tau, has)
        rows.append(
            row(
                f"best head, logit adjustment tau={tau}",
                oof,
                logit_adjusted(runs[best]["test"], class_prior(y, len(classes)), tau),
                [best],
            )
        )
    blend_dir = Path(out_dir) / "oof" / bcfg.get("name", "blend")
    if (blend_dir / "oof.npy").is_file():
        b = load_oof(out_dir, bcfg.get("name", "blend"))
        r = row(
            f"the blend stage's choice ({b['metrics'].get('chosen')})",
            np.nan_to_num(b["oof"]),
            b["test"],
            names,
            b["metrics"].get("seconds") or 0,
        )
        rows.append(r)
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
    log.info("ablation in %.0fs", time.time() - t_all)
    return rows
