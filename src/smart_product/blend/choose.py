"""Choosing the blend, and its logit adjustment.

- The choice rule (`choose`): the procedures in order of held-out weighted F1; the first whose
  refit on all folds (for the stacker: its cross-fit OOF) is also no worse than the best single
  head on OOF is chosen (`best_single` always is): a blend must win both ways, so one that only
  fits OOF noise is not used. With `blend.shift_guard: true` (default off) the order, and the
  bar of the best head, are held-out weighted F1 less each one's estimated OOF - test accuracy
  drop where positive (shift.py: no test label read), so a head that OOF flatters does not steer
  the choice.
- The logit adjustment (`prior_correction`): P / prior^tau of the chosen blend (the long-tail
  option at the blend level), with each fold's prior from the other folds' rows (`fold_priors`,
  `fold_adjusted`); tau is chosen out of fold like a procedure and applied only if that held-out
  score beats tau = 0.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..data import DataError
from ..heads import scores
from ..heads.calibrate import class_prior, logit_adjusted
from .inputs import BlendInputs
from .weights import combine

log = logging.getLogger(__name__)
TAUS = [0.0, 0.25, 0.5, 0.75, 1.0]


@dataclass
class Choice:
    name: str
    oof: np.ndarray
    test: np.ndarray
    record: dict  # the procedure's own: weights and temperatures, or the stacker's info
    single: dict  # each head's OOF scores
    best_head: str
    equal: dict  # the equal-weight mean's OOF scores
    tau: dict | None = None  # the logit adjustment (adjust)
    guard: dict | None = None  # the shift guard's table: held out, estimated gap, estimated test


def estimated_gap(record: dict) -> float | None:
    """A refit procedure's label-free estimate of its OOF - test accuracy (shift.py), or None."""
    sh = (record.get("stacker") or {}).get("shift") or record.get("shift")
    return None if sh is None else float(sh["gap"])


def guarded_order(procedures: dict, held: dict, made: dict) -> tuple[list[str], dict]:
    """The shift guard's order: by held-out weighted F1 less each procedure's estimated OOF - test
    accuracy drop where it is positive (shift.py: its fold models' confidence on the test rows
    against their OOF rows). Refits every procedure into `made`; returns (order, the table)."""
    table = {}
    for name in held:
        made[name] = procedures[name].refit()
        gap = estimated_gap(made[name][2])
        table[name] = {
            "held_out": round(held[name]["weighted_f1"], 4),
            "estimated_gap": None if gap is None else round(gap, 4),
            "estimated_test": round(held[name]["weighted_f1"] - max(gap or 0.0, 0.0), 4),
        }
    return sorted(held, key=lambda k: -table[k]["estimated_test"]), table


def choose(procedures: dict, held: dict, inp: BlendInputs) -> Choice:
    """The choice rule (module doc) over the procedures' held-out scores `held`."""
    from .procedures import guard_on

    y, has = inp.y, inp.has
    single = {h: scores(y[has], p[has].argmax(1)) for h, p in zip(inp.heads, inp.oofs)}
    best_head = max(single, key=lambda h: single[h]["weighted_f1"])
    equal = scores(y[has], combine([p[has] for p in inp.oofs], [1.0] * len(inp.heads)).argmax(1))
    made, guard = {}, None
    order = sorted(held, key=lambda k: -held[k]["weighted_f1"])
    if guard_on(inp):
        order, guard = guarded_order(procedures, held, made)
    bar = single[best_head]["weighted_f1"]
    if guard is not None:  # the best head, too, judged by its estimate on the test rows
        bar -= max(inp.head_shifts.get(best_head, {}).get("gap", 0.0), 0.0)
    for name in order:
        oof, test, record = made[name] if name in made else procedures[name].refit()
        refit_f1 = scores(y[has], oof[has].argmax(1))
        gap = max(estimated_gap(record) or 0.0, 0.0) if guard is not None else 0.0
        if refit_f1["weighted_f1"] - gap >= bar or name == "best_single":
            break
        log.info(
            "blend: %s wins held out but its refit (%.4f) is below the best single head (%.4f); next",
            name,
            refit_f1["weighted_f1"],
            single[best_head]["weighted_f1"],
        )
    return Choice(name, oof, test, record, single, best_head, equal, guard=guard)


def adjust(choice: Choice, inp: BlendInputs) -> Choice:
    """The chosen blend with its logit adjustment (if it pays held out); never-validated rows NaN."""
    tau = prior_correction(choice.oof, inp.y, inp.folds, inp.has, inp.splits, inp.bcfg.get("logit_adjust", TAUS))
    if tau["tau"]:
        choice.oof = tau.pop("oof")
        choice.test = logit_adjusted(choice.test, class_prior(inp.y, len(inp.classes)), tau["tau"])
    tau.pop("oof", None)
    choice.oof[~inp.has] = np.nan
    choice.tau = tau
    return choice


def prior_correction(P, y, folds, has, splits, taus) -> dict:
    """Logit adjustment of the chosen blend, P / prior^tau (the long-tail option at the blend
    level; heads/calibrate.py's logit_adjusted), with each fold's prior from the other folds' rows. tau is chosen
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


def fold_priors(y: np.ndarray, folds: np.ndarray, n_classes: int) -> dict:
    """{fold k: the class prior of the rows of the other folds} for every validated fold."""
    return {k: class_prior(y[folds != k], n_classes) for k in np.unique(folds[folds >= 0])}


def fold_adjusted(P: np.ndarray, folds: np.ndarray, priors: dict, tau: float, rows: np.ndarray) -> np.ndarray:
    """P[rows] (OOF rows) logit-adjusted, each fold's rows with its own prior (fold_priors), so
    no row's label reaches its own adjustment."""
    out = np.empty((int(rows.sum()), P.shape[1]), np.float32)
    sel = folds[rows]
    for k, prior in priors.items():
        out[sel == k] = logit_adjusted(P[rows & (folds == k)], prior, tau)
    return out
