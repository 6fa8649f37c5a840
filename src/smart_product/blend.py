"""Stage `blend`: Optuna-weighted blend of the heads' OOF probabilities -> submission.

    P = sum_h w_h * softmax(log P_h / T_h)      w_h >= 0, temperature T_h per head (or 1)

Optuna searches the weights over rows that have an OOF prediction, by one of several procedures:
maximise OOF weighted F1 (`optuna_f1`; `blend.temperature: true` adds temperatures), minimise log
loss (`optuna_logloss`, smoother, less prone to fitting noise), log loss with a temperature per
head (`optuna_logloss_temperature`), or just take the best single head (`best_single`); `stack`
replaces the weights with a level-2 model over the heads' probabilities (stack.py; `blend.stack:
false` turns it off), and `stack_groups` is the same with the group evidence of
`blend.stack.groups`. Guard against fitting the OOF set: each procedure is scored out of fold, fold
k's rows by its choice made on the other folds' OOF rows (its *held-out* weighted F1, printed
beside the best single head and the equal-weight mean; for the stacker that is its cross-fit OOF,
kept for the final blend). The procedure that wins out of sample is refit on all folds and applied
to the test probabilities (a temperature to each fold model's, as to the OOF rows; the stacker's K
fold fits each to its fold models', averaged: stack.py), if that refit is also no worse than the
best single head on OOF (else the next procedure by held-out score; `best_single` always
qualifies), so a blend that only fits OOF noise is not used. `blend.procedures` limits the
candidates. Each search is seeded with each head alone and the equal-weight mean, and runs on at
most `blend.max_rows` rows (a seeded sample; default 20,000), so its cost and memory do not grow
with the catalogue: at 91k rows x 864 classes a trial would otherwise recombine 300 MB matrices.
Everything stays float32. Writes oof/{name}/ (same format as a head), oof/{name}/weights.json and
the submission.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from .data import ID, TARGET, DataError, load_split
from .folds import load_folds
from .heads import head_names, scores
from .heads.calibrate import class_prior, fold_adjusted, fold_priors, logit_adjusted, tempered
from .report import available, load_oof
from .submit import write_submission

log = logging.getLogger(__name__)


def combine(probs: list[np.ndarray], weights, temps=None) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum() if w.sum() > 0 else np.full(len(w), 1 / len(w))
    temps = temps or [1.0] * len(probs)
    out = np.zeros_like(probs[0], dtype=np.float32)
    for p, wi, t in zip(probs, w, temps):
        if wi > 0:
            out += np.float32(wi) * tempered(p, t)
    return out


def _objective_value(P, y, metric: str) -> float:
    if metric == "logloss":
        return float(-np.log(np.clip(P[np.arange(len(y)), y], 1e-9, 1)).mean())
    return scores(y, P.argmax(1))["weighted_f1"]


def search_weights(probs, y, n_trials: int = 100, temperature: bool = False, metric: str = "f1", seed: int = 0) -> dict:
    """Optuna over non-negative weights (and temperatures) on these rows; returns the best."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    h = len(probs)
    direction = "minimize" if metric == "logloss" else "maximize"
    study = optuna.create_study(direction=direction, sampler=optuna.samplers.TPESampler(seed=seed))
    for i in range(h):  # each head alone, then the equal-weight mean
        study.enqueue_trial(
            {**{f"w{j}": float(j == i) for j in range(h)}, **({f"t{j}": 1.0 for j in range(h)} if temperature else {})}
        )
    study.enqueue_trial(
        {**{f"w{j}": 1.0 for j in range(h)}, **({f"t{j}": 1.0 for j in range(h)} if temperature else {})}
    )

    def objective(trial):
        w = [trial.suggest_float(f"w{j}", 0.0, 1.0) for j in range(h)]
        if sum(w) == 0:
            return float("inf") if direction == "minimize" else 0.0
        t = [trial.suggest_float(f"t{j}", 0.3, 3.0, log=True) for j in range(h)] if temperature else None
        return _objective_value(combine(probs, w, t), y, metric)

    study.optimize(objective, n_trials=max(n_trials, h + 1))
    p = study.best_params
    w = np.array([p[f"w{j}"] for j in range(h)])
    return {
        "weights": (w / w.sum()).tolist(),
        "temperatures": [p[f"t{j}"] for j in range(h)] if temperature else [1.0] * h,
        "value": study.best_value,
    }


def subsample(rows: np.ndarray, max_rows: int, seed: int) -> np.ndarray:
    """Indices of the True rows, or a seeded sample of `max_rows` of them (sorted)."""
    idx = np.flatnonzero(rows)
    if len(idx) <= max_rows:
        return idx
    return np.sort(np.random.default_rng(seed).choice(idx, max_rows, replace=False))


TAUS = [0.0, 0.25, 0.5, 0.75, 1.0]


def fold_splits(folds: np.ndarray, has: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(choice rows, scored rows) per fold: fold k's OOF rows are scored by a choice made on the
    other folds' OOF rows, so the choice has 80% of the rows (K=5), as the final blend's has all."""
    return [(has & (folds != k), has & (folds == k)) for k in sorted(set(folds[has].tolist()))]


def out_of_fold(choose, probs: list[np.ndarray], splits) -> np.ndarray:
    """Class predictions of a weight procedure, each fold's rows combined with the weights that
    `choose(rows)` picks on the other folds' rows (`splits`: fold_splits); other rows 0."""
    pred = np.zeros(len(probs[0]), np.int64)
    for fit_rows, score_rows in splits:
        w = choose(fit_rows)
        pred[score_rows] = combine([p[score_rows] for p in probs], w["weights"], w["temperatures"]).argmax(1)
    return pred


def prior_correction(P, y, folds, has, splits, taus) -> dict:
    """Logit adjustment of the chosen blend, P / prior^tau (the long-tail option at the blend
    level; heads/calibrate.py), with each fold's prior from the other folds' rows. tau is chosen
    like a procedure, out of fold (`splits`: fold_splits); it is applied (tau chosen on all rows)
    only if that held-out score beats tau = 0. Returns {tau, ..., oof}."""
    try:
        taus = sorted({0.0, *map(float, taus or [])})
    except (TypeError, ValueError):
        raise DataError(
            f"config blend.logit_adjust: a list of tau values (e.g. [0, 0.5, 1]) or [], not {taus!r}"
        ) from None
    if len(taus) == 1:
        return {"tau": 0.0}
    priors = fold_priors(y, np.where(has, folds, -1), P.shape[1])

    def adjusted(rows, t):
        return fold_adjusted(P, folds, priors, t, rows)

    def f1(rows, t):
        return scores(y[rows], adjusted(rows, t).argmax(1))["weighted_f1"]

    pred0 = np.zeros(len(y), np.int64)
    pred1 = np.zeros(len(y), np.int64)
    for fit_rows, score_rows in splits:
        best = max(taus, key=lambda t: f1(fit_rows, t))
        pred0[score_rows] = P[score_rows].argmax(1)
        pred1[score_rows] = adjusted(score_rows, best).argmax(1)
    without, with_ = scores(y[has], pred0[has])["weighted_f1"], scores(y[has], pred1[has])["weighted_f1"]
    out = {"tau": 0.0, "grid": taus, "held_out_without": without, "held_out_with": with_}
    if with_ > without:
        out["tau"] = max(taus, key=lambda t: f1(has, t))
        if out["tau"]:
            oof = P.copy()
            oof[has] = adjusted(has, out["tau"])
            out["oof"] = oof
    return out


def stacking(params, side, oofs, test_folds, y_all, folds, has, n_classes):
    """A stacker procedure (stack.py): held out = its cross-fit OOF (fold k's rows from stacker k,
    fit on the other folds); final = that OOF, and the test rows from each stacker k over fold k's
    models' test probabilities (`test_folds`, per head K x n_test x C), averaged.
    side: stack.row_side's (extra, extra_test, groups, groups_test); groups None = none."""
    from .stack import cross_fit

    extra, extra_test, groups, groups_test = side
    made = {}

    def held_out():
        made["oof"], made["test"], made["info"] = cross_fit(
            oofs, test_folds, y_all, folds, has, n_classes, params, extra, extra_test, groups, groups_test
        )
        return made["oof"].argmax(1)  # NaN rows (never validated) are not scored

    def final():
        return np.nan_to_num(made["oof"]), made["test"], {"stacker": {"params": params, **made["info"]}}

    return held_out, final


def fold_tempered_test(run: dict, T: float) -> np.ndarray:
    """A head's test probabilities for a weight procedure with temperature T. The temperature was
    chosen on OOF rows, each one fold model's prediction, so it is applied to each fold model's
    test probabilities before they are averaged (test_folds.npy); a head whose test.npy is one full
    fit (`test_from: full`) is a single model's already. T = 1: test.npy as it is."""
    full = (run["metrics"].get("fold_keys") or {}).get("-1") is not None
    if T == 1.0 or full or run.get("test_folds") is None:
        return tempered(run["test"], T)
    F = run["test_folds"]
    return sum(tempered(np.asarray(F[k], np.float32), T) for k in range(len(F))) / len(F)


def run_blend(cfg: dict) -> dict:
    bcfg = cfg.get("blend") or {}
    name = bcfg.get("name", "blend")
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
    t0 = time.time()
    train = load_split(cfg["data_dir"], "train", parse_text=False)
    if not np.array_equal(train[ID].to_numpy(), ref["train_ids"]):
        raise DataError(f"oof/{heads[0]}: made for other data than {cfg['data_dir']} (rerun `make train`)")
    classes = ref["classes"]
    y_all = np.searchsorted(classes, train[TARGET].to_numpy())
    folds = load_folds(cfg, train)
    has = ~np.isnan(ref["oof"]).any(1)
    for h, r in zip(heads, runs):
        if not np.array_equal(~np.isnan(r["oof"]).any(1), has):
            raise DataError(f"oof/{h}: OOF rows differ from oof/{heads[0]} (different folds? rerun `make train`)")
    oofs = [np.nan_to_num(r["oof"], copy=False) for r in runs]  # in place: no second n x classes copy
    n_trials, temp = int(bcfg.get("trials", 100)), bool(bcfg.get("temperature", False))
    seed = int(cfg.get("seed", 0))
    max_rows = int(bcfg.get("max_rows", 20_000))

    def optuna(metric_, temp_):
        # the search runs on at most `max_rows` of the rows (a seeded sample), so a trial recombines
        # max_rows x classes, not 91k x 864; the weights it finds are then scored on all the rows
        def choose(rows):
            idx = subsample(rows, max_rows, seed)
            return search_weights([p[idx] for p in oofs], y_all[idx], n_trials, temp_, metric_, seed)

        return choose

    def best_single_weights(rows):
        f1 = [scores(y_all[rows], p[rows].argmax(1))["weighted_f1"] for p in oofs]
        return {"weights": np.eye(len(heads))[int(np.argmax(f1))].tolist(), "temperatures": [1.0] * len(heads)}

    splits = fold_splits(folds, has)

    def weighted(choose):
        """A weight procedure: held out, fold k's rows by weights chosen on the other folds; final: on all."""

        def held_out():
            return out_of_fold(choose, oofs, splits)

        def final():
            w = choose(has)
            tests = [fold_tempered_test(r, t) for r, t in zip(runs, w["temperatures"])]  # tempered as the OOF rows
            return combine(oofs, w["weights"], w["temperatures"]), combine(tests, w["weights"]), w

        return held_out, final

    # held-out check: each procedure is scored out of fold (fold k's rows by its choice on the
    # other folds); the better procedure is refit on all folds. A blend that does not beat
    # the best single head out of sample is not used.
    k = int(cfg.get("folds", {}).get("k", 5))
    procedures = {
        "optuna_f1": weighted(optuna("f1", temp)),
        "optuna_logloss": weighted(optuna("logloss", False)),
        "optuna_logloss_temperature": weighted(optuna("logloss", True)),
        "best_single": weighted(best_single_weights),
    }
    scfg = bcfg.get("stack", {})
    if scfg is not False and len(heads) > 1:
        # `stack` without group evidence, `stack_groups` with `blend.stack.groups`: held out decides
        from .stack import make_stacker, row_side

        params = {"seed": seed, **(scfg or {})}
        make_stacker(params)  # a bad config key fails here, before any fit
        side = row_side(cfg, params.get("groups"))
        missing = [h for h, r in zip(heads, runs) if r["test_folds"] is None]
        if missing:
            raise DataError(
                f"oof/{missing[0]}: no test_folds.npy (each fold model's test probabilities, which the "
                f"stacker scores fold by fold); rerun `make train`"
            )
        args = (oofs, [r["test_folds"] for r in runs], y_all, folds, has, len(classes))
        procedures["stack"] = stacking({**params, "groups": []}, (*side[:2], None, None), *args)
        if params.get("groups"):
            procedures["stack_groups"] = stacking(params, side, *args)
    if bcfg.get("procedures"):
        procedures = {k: v for k, v in procedures.items() if k in bcfg["procedures"]}
    held = {}
    for proc, (held_out, _) in procedures.items():
        held[proc] = scores(y_all[has], held_out()[has])
    single = {h: scores(y_all[has], p[has].argmax(1)) for h, p in zip(heads, oofs)}
    best_head = max(single, key=lambda h: single[h]["weighted_f1"])
    equal = scores(y_all[has], combine([p[has] for p in oofs], [1.0] * len(heads)).argmax(1))

    # in order of held-out score, the first procedure whose refit on all folds (for the stacker:
    # its cross-fit OOF) is also no worse than the best single head on OOF (best_single always
    # is): a blend must win both ways
    for chosen in sorted(held, key=lambda k: -held[k]["weighted_f1"]):
        blend_oof, blend_test, final = procedures[chosen][1]()
        refit_f1 = scores(y_all[has], blend_oof[has].argmax(1))
        if refit_f1["weighted_f1"] >= single[best_head]["weighted_f1"] or chosen == "best_single":
            break
        log.info(
            "blend: %s wins held out but its refit (%.4f) is below the best single head (%.4f); next",
            chosen,
            refit_f1["weighted_f1"],
            single[best_head]["weighted_f1"],
        )
    tau = prior_correction(blend_oof, y_all, folds, has, splits, bcfg.get("logit_adjust", TAUS))
    if tau["tau"]:
        blend_oof, blend_test = tau.pop("oof"), logit_adjusted(blend_test, class_prior(y_all, len(classes)), tau["tau"])
    tau.pop("oof", None)
    blend_oof[~has] = np.nan
    refit = scores(y_all[has], blend_oof[has].argmax(1))

    out = Path(cfg["out_dir"]) / "oof" / name
    out.mkdir(parents=True, exist_ok=True)
    for f, arr in (
        ("oof", blend_oof),
        ("test", blend_test),
        ("classes", classes),
        ("train_ids", ref["train_ids"]),
        ("test_ids", ref["test_ids"]),
    ):
        np.save(out / f"{f}.npy", arr)
    summary = {
        "heads": heads,
        "weights": dict(zip(heads, final.get("weights") or [])),
        "temperatures": dict(zip(heads, final.get("temperatures") or [])),
        "stacker": final.get("stacker"),
        "trials": n_trials,
        "chosen": chosen,
        "logit_adjust": tau,
        "oof_refit": refit,
        "oof_held_out": held[chosen],
        "held_out": held,
        "best_single_head": {"name": best_head, **single[best_head]},
        "equal_weight_mean": equal,
        "single_heads": single,
        "never_validated_rows": int((~has).sum()),
        "seconds": round(time.time() - t0, 2),
    }
    per_fold = [{"fold": f, **scores(y_all[folds == f], blend_oof[folds == f].argmax(1))} for f in range(k)]
    (out / "weights.json").write_text(json.dumps(summary, indent=2))
    (out / "metrics.json").write_text(
        json.dumps({"head": name, "kind": "blend", "overall": refit, "folds": per_fold, **summary}, indent=2)
    )
    sub = write_submission(cfg["out_dir"], name, ref["test_ids"], classes[blend_test.argmax(1)], cfg["data_dir"])
    calib = [
        f"  {h:<16} {r['metrics']['overall']['logloss_raw']:.4f} -> {r['metrics']['overall']['logloss']:.4f}"
        for h, r in zip(heads, runs)
        if "logloss_raw" in r["metrics"].get("overall", {})
    ]
    lines = ["OOF log loss of the calibrated heads, before -> after the in-fold temperature:"] + calib if calib else []
    lines += [
        f"blend of {len(heads)} heads ({n_trials} Optuna trials a search), OOF weighted F1 on {int(has.sum())} rows:",
        f"  best single head  {best_head:<10} {single[best_head]['weighted_f1']:.4f}",
        f"  equal-weight mean            {equal['weighted_f1']:.4f}",
        "  held out (fold k's rows scored by each procedure's choice on the other folds): "
        + ", ".join(f"{k} {v['weighted_f1']:.4f}" for k, v in held.items())
        + f" -> {chosen}",
        f"  blend ({chosen}), refit on all folds {refit['weighted_f1']:.4f}   "
        + (
            "stacker over " + ", ".join(heads)
            if chosen.startswith("stack")
            else "weights " + ", ".join(f"{h}={w:.2f}" for h, w in summary["weights"].items())
        ),
        f"  logit adjustment of the blend: tau {tau['tau']} (held out: {tau['held_out_without']:.4f} without, "
        f"{tau['held_out_with']:.4f} with tau chosen on the other folds)"
        if "held_out_with" in tau
        else "  logit adjustment of the blend: off",
        f"  submission: {sub}",
    ]
    print("\n".join(lines))
    return summary
