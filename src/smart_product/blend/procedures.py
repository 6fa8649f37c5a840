"""The blend's procedures, in one table with one interface (`Procedure`): `held_out()` scores it
out of fold, fold k's rows by its choice made on the other folds' OOF rows; `refit()` makes it on
all folds, for the OOF rows and the test rows, if it is chosen (choose.py).

- `optuna_f1`: weights (and with `blend.temperature: true` a temperature per head) maximising OOF
  weighted F1; `optuna_logloss`: weights minimising log loss (smoother, less prone to fitting
  noise); `optuna_logloss_temperature`: log loss with a temperature per head. Each search is seeded
  with each head alone and the equal-weight mean, and runs on at most `blend.max_rows` rows (a
  seeded sample; default 20,000), so its cost and memory do not grow with the catalogue. The test
  rows get a temperature on each fold model's probabilities, as the OOF rows did (weights.py).
- `best_single`: the head with the best OOF weighted F1 (on the choice rows).
- `stack` and `stack_groups`: the level-2 model over the heads' probabilities (stack.py), without
  and with the group evidence of `blend.stack.groups`; held out is its cross-fit OOF, and the test
  rows come from each fold's stacker over that fold's models' test probabilities, averaged.
  `blend.stack: false` turns both off.

`blend.procedures` limits the candidates. Everything stays float32.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..data import DataError
from ..heads import scores
from .inputs import BlendInputs
from .weights import combine, fold_tempered_test, out_of_fold, search_weights, subsample


@dataclass
class Procedure:
    held_out: Callable[[], np.ndarray]  # class index of every row; fold k's rows by the choice on the others
    refit: Callable[[], tuple]  # (OOF probabilities, test probabilities, its record for weights.json)


def weighted(inp: BlendInputs, choose) -> Procedure:
    """A weight procedure: `choose(rows)` -> {weights, temperatures} picked on those rows."""

    def refit():
        w = choose(inp.has)
        tests = [fold_tempered_test(r, t) for r, t in zip(inp.runs, w["temperatures"])]  # tempered as the OOF rows
        oof = combine(inp.oofs, w["weights"], w["temperatures"])
        return oof, combine(tests, w["weights"]), {**w, "shift": weighted_shift(inp, oof, w)}

    return Procedure(lambda: out_of_fold(choose, inp.oofs, inp.splits), refit)


def weighted_shift(inp: BlendInputs, oof: np.ndarray, w: dict) -> dict | None:
    """The weighted blend's fold models (fold k's: the weights over the heads' fold k models) on
    their OOF rows against the test rows, estimated without test labels (shift.py)."""
    from .shift import fold_model_shift, shift_summary

    if any(r.get("test_folds") is None for r in inp.runs):
        return None
    per = []
    for i, (_, rows) in enumerate(inp.splits):
        tests = [np.asarray(r["test_folds"][i], np.float32) for r in inp.runs]
        P_test = combine(tests, w["weights"], w["temperatures"])
        per.append(fold_model_shift(oof[rows], inp.y[rows], P_test))
    return shift_summary(per)


def optuna(inp: BlendInputs, metric: str, temperature: bool):
    """Weights by an Optuna search on at most `blend.max_rows` of the rows (a seeded sample), so a
    trial recombines max_rows x classes, not 91k x 864; they are then scored on all the rows."""
    n_trials, max_rows = int(inp.bcfg.get("trials", 100)), int(inp.bcfg.get("max_rows", 20_000))

    def choose(rows):
        idx = subsample(rows, max_rows, inp.seed)
        return search_weights([p[idx] for p in inp.oofs], inp.y[idx], n_trials, temperature, metric, inp.seed)

    return choose


def best_single(inp: BlendInputs):
    def choose(rows):
        f1 = [scores(inp.y[rows], p[rows].argmax(1))["weighted_f1"] for p in inp.oofs]
        return {"weights": np.eye(len(inp.heads))[int(np.argmax(f1))].tolist(), "temperatures": [1.0] * len(inp.heads)}

    return choose


def stacking(inp: BlendInputs, params: dict, side: tuple, keep: list[int] | None = None) -> Procedure:
    """A stacker procedure: held out = its cross-fit OOF (fold k's rows from stacker k, fit on the
    other folds), kept as the refit's OOF; test rows from each stacker k over fold k's models' test
    probabilities (the heads' test_folds), averaged. side: stack.row_side's (extra, extra_test,
    groups, groups_test); groups None = none. keep: the heads it reads (indices; default all)."""
    from .stack import cross_fit

    extra, extra_test, groups, groups_test = side
    keep = list(range(len(inp.heads))) if keep is None else keep
    made = {}

    def held_out():
        made["oof"], made["test"], made["info"] = cross_fit(
            [inp.oofs[i] for i in keep],
            [inp.runs[i]["test_folds"] for i in keep],
            inp.y,
            inp.folds,
            inp.has,
            len(inp.classes),
            params,
            extra,
            extra_test,
            groups,
            groups_test,
        )
        return made["oof"].argmax(1)  # NaN rows (never validated) are not scored

    def refit():
        heads = [inp.heads[i] for i in keep]
        return np.nan_to_num(made["oof"]), made["test"], {"stacker": {"params": params, "heads": heads, **made["info"]}}

    return Procedure(held_out, refit)


def procedures(inp: BlendInputs) -> dict[str, Procedure]:
    """The table of the procedures this config lets compete (`blend.procedures`)."""
    table = {
        "optuna_f1": weighted(inp, optuna(inp, "f1", bool(inp.bcfg.get("temperature", False)))),
        "optuna_logloss": weighted(inp, optuna(inp, "logloss", False)),
        "optuna_logloss_temperature": weighted(inp, optuna(inp, "logloss", True)),
        "best_single": weighted(inp, best_single(inp)),
    }
    scfg = inp.bcfg.get("stack", {})
    if scfg is not False and len(inp.heads) > 1:
        from .stack import make_stacker, row_side

        params = {"seed": inp.seed, **(scfg or {})}
        make_stacker(params)  # a bad config key fails here, before any fit
        side = row_side(inp.cfg, params.get("groups"), inp.frames)
        missing = [h for h, r in zip(inp.heads, inp.runs) if r["test_folds"] is None]
        if missing:
            raise DataError(
                f"oof/{missing[0]}: no test_folds.npy (each fold model's test probabilities, which the "
                f"stacker scores fold by fold); rerun `make train`"
            )

        def stackers(keep=None, suffix=""):  # without and with the group evidence, over the heads kept
            out = {f"stack{suffix}": stacking(inp, {**params, "groups": []}, (*side[:2], None, None), keep)}
            if params.get("groups"):
                out[f"stack_groups{suffix}"] = stacking(inp, params, side, keep)
            return out

        table.update(stackers())
        lead = leading_head(inp)
        if lead is not None:  # the shift guard's candidates: each stacker without the head it would lean on
            keep = [i for i in range(len(inp.heads)) if i != lead]
            guarded = stackers(keep, f"_without_{inp.heads[lead]}")
            table.update({k: v for k, v in guarded.items() if k.split("_without_")[0] in table})
    if inp.bcfg.get("procedures"):
        allowed = set(inp.bcfg["procedures"])
        table = {k: v for k, v in table.items() if k.split("_without_")[0] in allowed}
    return table


def leading_head(inp: BlendInputs) -> int | None:
    """With `blend.shift_guard` on and 3+ heads: the head with the best OOF weighted F1 (the one a
    stacker trusts most, whose OOF, if it outruns its unseen score, steers the blend), when its
    estimated OOF - test accuracy drop (shift.py, no test label read) is above the other heads'
    median: a head that looks more shifted than the rest. Else None (no extra stacker)."""
    if not guard_on(inp) or len(inp.heads) < 3 or inp.bcfg.get("stack", {}) is False:
        return None
    f1 = [scores(inp.y[inp.has], p[inp.has].argmax(1))["weighted_f1"] for p in inp.oofs]
    lead = int(np.argmax(f1))
    gaps = {h: v["gap"] for h, v in inp.head_shifts.items()}
    others = [g for h, g in gaps.items() if h != inp.heads[lead]]
    if inp.heads[lead] not in gaps or not others or gaps[inp.heads[lead]] <= float(np.median(others)):
        return None
    return lead


def guard_on(inp: BlendInputs) -> bool:
    g = inp.bcfg.get("shift_guard", False)
    if not isinstance(g, bool):
        raise DataError(f"config blend.shift_guard: true or false, not {g!r}")
    return g
