"""The `train` stage (`train_heads`): every enabled head through the fold loop (loop.py), then the
pseudo-label rounds (pseudo.py), which refit heads through the same loop."""

from __future__ import annotations

import logging
from pathlib import Path

from ..data import TARGET, DataError, load_split
from ..features.store import is_skipped
from .loop import head_configs, run_head
from .pseudo import pseudo_config, run_pseudo_rounds

log = logging.getLogger(__name__)


def train_heads(cfg: dict, only: list[str] | None = None, force: bool = False, fold=None) -> dict:
    """Run the enabled heads (or `only` these), then the pseudo-label rounds. A head with
    `max_classes: N` is skipped, with a log line, on a catalogue of more classes: a one-vs-rest
    liblinear head fits one problem per class; so is a head whose every feature set was skipped (an
    image-only head on a catalogue without photos). `fold=k` (FOLD=k): fold k of every head and
    pseudo-label round only, into oof/{head}/fold{k}/; a later run without it assembles them."""
    from ..features import parse_fold

    fold = parse_fold(fold)
    if fold == "shared":
        raise DataError("train: FOLD=shared is for `make features` (the label-free sets); give a fold number")
    heads = head_configs(cfg)
    names = only or [n for n, h in heads.items() if h.get("enabled", True)]
    limits = {n: int(heads[n]["max_classes"]) for n in names if not only and (heads.get(n) or {}).get("max_classes")}
    if limits:
        n_classes = load_split(cfg["data_dir"], "train", parse_text=False)[TARGET].nunique()
        for n, limit in limits.items():
            if n_classes > limit:
                log.warning("heads.%s: skipped, the catalogue has %d classes > its max_classes %d", n, n_classes, limit)
                names.remove(n)
                _drop_earlier(cfg, n)
    for n in [n for n in names if not only and _reads_only_skipped(cfg, heads[n])]:
        log.warning("heads.%s: skipped, every feature set it reads was skipped (absent modality)", n)
        names.remove(n)
        _drop_earlier(cfg, n)
    pcfg = pseudo_config(cfg)
    skipped = [h for h in pcfg["heads"] + pcfg["sources"] if h not in names and not only]
    if pcfg["rounds"] and skipped:
        log.warning("pseudo: %s skipped on this catalogue; no pseudo-label rounds", sorted(set(skipped)))
        pcfg["rounds"] = 0
    results = {n: run_head(cfg, n, force=force, fold_job=fold) for n in names}
    if pcfg["rounds"] and not only:
        results.update(run_pseudo_rounds(cfg, pcfg, force=force, fold=fold))
    return results


def _drop_earlier(cfg: dict, name: str) -> None:
    """A skipped head's folder from an earlier run (other data or settings) would be blended and
    reported as if this run had made it: removed, with a log line."""
    import shutil

    from .. import oof

    folder = oof.folder(cfg["out_dir"], name)
    if folder.exists():
        shutil.rmtree(folder)
        log.warning("%s: removed, an earlier run's files of a head this run skips", folder)


def _reads_only_skipped(cfg: dict, hcfg: dict) -> bool:
    """Whether every feature set the head reads was skipped (features/{set}/meta.json says so)."""
    sets = hcfg.get("features") or []
    return bool(sets) and all(is_skipped(Path(cfg["out_dir"]) / "features" / f) for f in sets)
