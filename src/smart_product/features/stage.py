"""Stage `features`: every enabled set not already cached (make_features), folds as jobs
(`FOLD=k`, `FOLD=shared`), torchrun (rank 0 writes)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import config_hash
from ..data import ID, DataError, apply_image_status, check_images, check_photos, fingerprint, load_data
from ..memory import PeakWindow
from .backbone import absent_modality, finetuned_embed, frozen_embed, precision_key
from .fusion import fusion_embed, fusion_key
from .kinds import CHEAP, CHEAP_FN, FUSION, feature_sets, is_per_fold
from .store import is_done, save_matrices, is_skipped, np_save_atomic

log = logging.getLogger(__name__)


def parse_fold(fold) -> int | str | None:
    """`--fold` / FOLD=: None (everything), an int k (>= -1) or "shared" (label-free sets only)."""
    if fold is None or fold == "":
        return None
    if str(fold) == "shared":
        return "shared"
    try:
        k = int(fold)
    except ValueError:
        raise DataError(f"FOLD={fold!r}: a fold number (0..K-1, -1 = the full fit) or 'shared'") from None
    if k < -1:
        raise DataError(f"FOLD={k}: a fold number (0..K-1, -1 = the full fit) or 'shared'")
    return k



def make_features(cfg: dict, only: list[str] | None = None, fold=None) -> dict:
    """Compute every enabled feature set (or `only` these) not already cached; returns {set: {"seconds",
    "peak_rss_gib"}} of the sets computed (a set skipped for an absent modality: 0 s).

    `fold` (FOLD=k, folds as jobs): per-fold (fine-tuned) sets compute only their fold k, into the
    same fold{k}/ folder a full run writes; label-free sets are computed if missing. `fold="shared"`:
    only the label-free sets (run it once before launching FOLD=k jobs in parallel).
    Under torchrun (WORLD_SIZE > 1) rank 0 computes the label-free sets and writes every file; all
    processes fine-tune the per-fold sets together (DDP).
    """
    from ..backbones import barrier, dist_info
    from ..folds import load_folds

    fold = parse_fold(fold)
    rank, world = dist_info()
    root = Path(cfg["out_dir"]) / "features"
    every = feature_sets(cfg)
    all_sets = (cfg.get("features") or {}).get("sets") or {}  # a fusion set borrows disabled sets' backbones
    data_fp = fingerprint(cfg["data_dir"])
    keys = {name: config_hash({"set": opts, "data": data_fp, **precision_key(opts)}) for name, opts in every.items()}
    for name, opts in every.items():  # a fusion set's key holds the keys of the sets it reads
        if opts["kind"] in FUSION:
            keys[name] = config_hash({"set": opts, "data": data_fp, "uses": fusion_key(opts, all_sets, keys)})
    if only:
        unknown = set(only) - set(every)
        if unknown:
            raise DataError(f"features: no set named {sorted(unknown)} in the config ({sorted(every)})")
    # fusion sets last: they read the other sets' files
    sets = {k: v for k, v in sorted(every.items(), key=lambda kv: kv[1]["kind"] in FUSION) if not only or k in only}
    ctx = {"root": root, "data_fp": data_fp, "all_sets": all_sets}
    train = test = None
    timings = {}
    for name, opts in sets.items():
        folder = root / name
        base_key = keys[name]
        per_fold = is_per_fold(opts)
        if per_fold and fold == "shared":
            continue
        if not per_fold and rank > 0:  # torchrun: label-free sets are rank 0's
            continue
        if per_fold:
            folds_path = Path(cfg["out_dir"]) / "folds" / "folds.csv"
            if not folds_path.is_file():
                raise DataError(f"{folds_path}: missing file (run `make folds` first)")
            fold_key = config_hash({"base": base_key, "folds": folds_path.read_text()})
            ks = sorted(set(range(int(cfg.get("folds", {}).get("k", 5)))) | ({-1} if opts.get("full_fit") else set()))
            if isinstance(fold, int):
                if fold not in ks:
                    log.info("features/%s: no fold %d (folds %s)", name, fold, ks)
                    continue
                ks = [fold]
            todo = [k for k in ks if not is_done(folder / f"fold{k}" / "meta.json", fold_key)]
        else:
            todo = [] if is_done(folder / "meta.json", base_key) else [None]
        if is_done(folder / "meta.json", base_key) and is_skipped(folder):
            log.info(
                "features/%s: cached, skipped (%s)", name, json.loads((folder / "meta.json").read_text())["skipped"]
            )
            continue
        if not todo:
            log.info("features/%s: cached, nothing to do%s", name, f" for fold {fold}" if isinstance(fold, int) else "")
            continue
        if train is None:
            train, test = load_for_features(cfg)
        reason = absent_modality(train, test, opts)
        if rank == 0:
            folder.mkdir(parents=True, exist_ok=True)
            if not reason:
                (folder / "meta.json").unlink(missing_ok=True)  # a per-fold set's old skip marker
                np_save_atomic(folder / "train_ids.npy", train[ID].to_numpy())
                np_save_atomic(folder / "test_ids.npy", test[ID].to_numpy())
        if reason:  # nothing to embed: no matrices, heads that list this set run without it
            log.warning("features/%s: skipped, %s", name, reason)
            if rank == 0:
                (folder / "meta.json").write_text(
                    json.dumps(
                        {"key": base_key, "set": opts, "skipped": reason, "data_fingerprint": data_fp},
                        indent=2,
                        default=str,
                    )
                )
            timings[name] = {"seconds": 0.0, "peak_rss_gib": None}
            continue
        t0, peak = time.time(), PeakWindow()
        if not per_fold:
            if opts["kind"] in CHEAP:
                Xtr, Xte, cols = CHEAP_FN[opts["kind"]](train, test, opts)
                extra = {"columns": cols[:50] + (["..."] if len(cols) > 50 else [])}
            else:
                Xtr, Xte, extra = frozen_embed(train, test, opts, ctx)
            save_matrices(
                folder,
                Xtr,
                Xte,
                {
                    "key": base_key,
                    "set": opts,
                    "data_fingerprint": data_fp,
                    "dim": int(Xtr.shape[1]),
                    "seconds": round(time.time() - t0, 2),
                    **extra,
                },
            )
        else:
            fold_of_row = load_folds(cfg, train)
            for k in todo:
                tk = time.time()
                embed_fold = fusion_embed if opts["kind"] in FUSION else finetuned_embed
                done = embed_fold(train, test, opts, fold_of_row, k, ctx)
                if done is not None:  # rank 0 (or a single process) writes
                    Xtr, Xte, fit_ids, extra, enc = done
                    sub = folder / f"fold{k}"
                    sub.mkdir(parents=True, exist_ok=True)
                    (sub / "meta.json").unlink(missing_ok=True)
                    np.save(sub / "trained_on.npy", fit_ids)
                    np.savez(sub / "class_head.npz", **extra.pop("class_head"))  # for `kind: finetuned` heads
                    if opts.get("save_weights"):
                        import torch

                        torch.save(enc.state_dict(), sub / "encoder.pt")
                    save_matrices(
                        sub,
                        Xtr,
                        Xte,
                        {
                            "key": fold_key,
                            "set": opts,
                            "fold": k,
                            "data_fingerprint": data_fp,
                            "dim": int(Xtr.shape[1]),
                            "seconds": round(time.time() - tk, 2),
                            "world_size": world,
                            "peak_rss_gib": peak.gib(),  # the set's, up to this fold (its caches included)
                            **extra,
                        },
                    )
                barrier()
        timings[name] = {"seconds": round(time.time() - t0, 2), "peak_rss_gib": peak.gib()}
        log.info("features/%s: done in %.1fs, peak RSS %.2f GiB", name, timings[name]["seconds"], peak.gib())
    return timings


def load_for_features(cfg):
    train, test = load_data(cfg["data_dir"])
    note = check_photos(cfg["data_dir"], train, test, cfg.get("images", "auto"))  # stops on misplaced photos
    log.info("features: %s", note)
    train = apply_image_status(train, check_images(train), "train")
    test = apply_image_status(test, check_images(test), "test")
    return train, test
