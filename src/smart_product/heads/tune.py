"""Optuna search of one head's params on OOF weighted F1 (`make tune HEAD=name`)."""

from __future__ import annotations

import json
import logging

from .. import oof as oof_files
from ..data import DataError
from .loop import head_configs, run_head

log = logging.getLogger(__name__)

SEARCH_SPACES = {
    "logreg": lambda t: {"C": t.suggest_float("C", 1e-3, 10, log=True)},
    "mlp": lambda t: {
        "dropout": t.suggest_float("dropout", 0.1, 0.6),
        "lr": t.suggest_float("lr", 1e-4, 3e-3, log=True),
        "label_smoothing": t.suggest_float("label_smoothing", 0.0, 0.2),
        "oversample_to": t.suggest_categorical("oversample_to", [0, 8, 16, 32]),
    },
    "catboost": lambda t: {
        "dim": t.suggest_int("dim", 16, 96, step=16),
        "depth": t.suggest_int("depth", 3, 8),
        "learning_rate": t.suggest_float("learning_rate", 0.03, 0.3, log=True),
        "l2_leaf_reg": t.suggest_float("l2_leaf_reg", 1, 10, log=True),
    },
    "lfda_knn": lambda t: {
        "n_components": t.suggest_int("n_components", 16, 96, step=16),
        "n_neighbors": t.suggest_int("n_neighbors", 3, 30),
        "min_count": t.suggest_categorical("min_count", [2, 4, 8, 16]),
    },
}


def tune_head(cfg: dict, name: str, n_trials: int = 20, folds_to_run=None) -> dict:
    """Optuna search of a head's params on OOF weighted F1. The study lives in
    oof/{name}/optuna.db (SQLite), so an interrupted search resumes: a rerun adds trials until
    `n_trials` are complete. Writes oof/{name}/best_params.json; use them with
    `heads.{name}.params.KEY=VALUE` or by copying them into the config."""
    import optuna

    hcfg = head_configs(cfg).get(name)
    if hcfg is None:
        raise DataError(f"no head named {name!r} in the config ({sorted(head_configs(cfg))})")
    space = SEARCH_SPACES.get(hcfg["kind"])
    if space is None:
        raise DataError(f"no search space for head kind {hcfg['kind']!r}")
    out = oof_files.folder(cfg["out_dir"], name)
    out.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name=name,
        storage=f"sqlite:///{out / 'optuna.db'}",
        load_if_exists=True,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=int(cfg.get("seed", 0))),
    )
    done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    todo = max(0, n_trials - done)
    log.info("tune %s: %d trials done, %d to go (study %s)", name, done, todo, out / "optuna.db")

    def objective(trial):
        return run_head(cfg, name, params=space(trial), folds_to_run=folds_to_run, write=False)["overall"][
            "weighted_f1"
        ]

    if todo:
        study.optimize(objective, n_trials=todo)
    best = {"params": study.best_params, "weighted_f1": study.best_value, "trials": len(study.trials)}
    (out / "best_params.json").write_text(json.dumps(best, indent=2))
    log.info("tune %s: best OOF weighted F1 %.4f with %s", name, study.best_value, study.best_params)
    return best
