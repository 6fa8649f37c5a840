"""Pseudo-labels: test rows that fold k's models label confidently join fold k's training rows.

Config `pseudo: {rounds: R, threshold: 0.9, heads: [h, ...], sources: [h, ...]}`. Round r
refits each head h in `heads` as oof/{h}_pl{r}/. For fold k, its extra training rows are the
test rows where the equal-weight mean of fold k's round r-1 test probabilities of `sources`
(default: `heads`; round 0 = the heads themselves, round r-1 = their `_pl{r-1}` refits) is at
least `threshold`, labelled with its argmax. Those fold-k models were fit on folds != k (and on
test rows labelled by earlier fold-k models), so fold k's labels never reach fold k's OOF rows
(docs/folds.md, the fold rule one level up); never a blend, whose weights saw every fold's labels.
Test probabilities of a round are the mean of its K fold models.
"""

from __future__ import annotations

import logging

from .. import oof as oof_files
from ..data import DataError
from .loop import run_head

log = logging.getLogger(__name__)


def pseudo_config(cfg: dict) -> dict:
    """pseudo: {rounds, threshold, heads, sources}. Heads that the config does not run (absent,
    `enabled: false`, or over their max_classes) are left out with a warning; no rounds if none is left."""
    p = dict(cfg.get("pseudo") or {})
    rounds = int(p.get("rounds", 0) or 0)
    threshold = float(p.get("threshold", 0.9))
    if not 0 < threshold <= 1:
        raise DataError(f"config pseudo.threshold must be in (0, 1], not {threshold}")
    heads = list(p.get("heads") or [])
    if rounds and not heads:
        raise DataError("config pseudo: rounds > 0 needs pseudo.heads (the heads to refit with pseudo-labels)")
    cfg_heads = cfg.get("heads") or {}
    runs = [n for n, h in cfg_heads.items() if (h or {}).get("enabled", True)]
    sources = list(p.get("sources") or heads)
    missing = [h for h in dict.fromkeys(heads + sources) if h not in runs]
    if rounds and missing:
        log.warning("config pseudo: %s not among the enabled heads; left out of the pseudo-label rounds", missing)
    heads, sources = [h for h in heads if h in runs], [h for h in sources if h in runs]
    if not heads or not sources:
        rounds = 0
    return {"rounds": rounds, "heads": heads, "sources": sources, "threshold": threshold}


def fold_pseudo_labels(out_dir, sources: list[str], threshold: float, fold: int | None = None) -> dict:
    """{fold index: (test rows mask, labels)} from the sources' per-fold test probabilities
    (every fold, or only `fold`)."""
    mean = None
    for s in sources:
        P = oof_files.test_folds(out_dir, s, fold)
        mean = P if mean is None else mean + P
    mean /= len(sources)
    folds = range(len(mean)) if fold is None else [fold]
    return {k: (mean[i].max(1) >= threshold, mean[i].argmax(1)) for i, k in enumerate(folds)}


def run_pseudo_rounds(cfg: dict, pcfg: dict, force: bool = False, fold: int | None = None) -> dict:
    """The rounds for every fold, or (FOLD=k jobs) for fold k alone into oof/{h}_pl{r}/fold{k}/."""
    results, prev = {}, list(pcfg["sources"])
    k = int(cfg.get("folds", {}).get("k", 5))
    last = {h: None for h in pcfg["heads"]}
    if fold == -1:  # pseudo-label rounds have no full fit
        return results
    for r in range(1, pcfg["rounds"] + 1):
        labels = fold_pseudo_labels(cfg["out_dir"], prev, pcfg["threshold"], fold)
        if fold is None and len(labels) != k:
            raise DataError(f"pseudo round {r}: sources {prev} hold {len(labels)} fold models, the folds have {k}")
        n_rows = [int(m.sum()) for m, _ in labels.values()]
        log.info(
            "pseudo round %d: %s test rows per fold at probability >= %.2f (from %s)",
            r,
            n_rows,
            pcfg["threshold"],
            ", ".join(prev),
        )
        for h in pcfg["heads"]:
            name = f"{h}_pl{r}"
            m = run_head(cfg, h, pseudo=labels, out_name=name, force=force, fold_job=fold)
            if fold is None:
                base = last[h] or results.get(h) or _metrics(cfg, h)
                gain = m["overall"]["weighted_f1"] - base["overall"]["weighted_f1"]
                log.info(
                    "pseudo round %d: %s OOF weighted F1 %.4f (%+.4f against round %d)",
                    r,
                    name,
                    m["overall"]["weighted_f1"],
                    gain,
                    r - 1,
                )
            results[name], last[h] = m, m
        prev = [f"{h}_pl{r}" for h in pcfg["heads"]]
    return results


def _metrics(cfg, head):
    return oof_files.read_metrics(cfg["out_dir"], head)
