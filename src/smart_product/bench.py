"""`make bench`: the whole pipeline on one catalogue, with its cost, beside peer baselines.

Runs folds -> features -> train -> blend with the given config in this process, timing each
stage, then fits the peers on the same train rows and scores everything on the same test rows
against DATA/solution.csv:
- TF-IDF word 1-2 + char_wb 2-5 over all text -> LogisticRegression C=10 (lbfgs; the first thing a
  practitioner tries), up to `bench.lr_max_classes` (200) classes: beyond that its weights and
  lbfgs history no longer fit in memory;
- the data README's TF-IDF (min_df 2 / 3, 300k columns each) -> one-vs-rest LinearSVC C=0.5, the
  stronger peer on every shared catalogue.
`bench.peers: [lr, svm]` picks them explicitly. A peer that fails (memory, a library error) is
reported as failed; the results are written all the same. Writes {out_dir}/bench/results.json and
results.md: OOF weighted F1 per head and for the blend, test weighted F1 (heads, blend, peers),
the blend's test error as a ratio of the stronger peer's, wall time per stage and per head,
peak RSS, image embedding rate.

`bench.resplit: grouped | random` (with `bench.resplit_seed`) checks whether OOF predicts the score
on unseen data on any catalogue, solution.csv or not: a fifth of the train rows becomes a
pseudo-test split with its labels (`make_resplit`), the rest is the train split, and the whole
run above uses that catalogue ({out_dir}/resplit/) instead of DATA's own test split. `grouped`
holds out whole near-duplicate clusters (dups.py), as a test split that keeps a product's
variants together does; `random` holds out rows. The report puts every head's and the blend's OOF
beside its pseudo-test score. benchmarks/resplit.py runs it over seeds.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

from .config import n_cpus
from .data import ID, TARGET, DataError, label_array, load_data, read_labels
from .memory import peak_rss_gib

log = logging.getLogger(__name__)


# the data README's peer TF-IDF: word 1-2 + char_wb 2-5 over all text, min_df 2 / 3, 300k columns each
PEER_TFIDF = {"fields": {"all": {"word": [1, 2], "char": [2, 5], "min_df": [2, 3], "max_features": 300_000}}}


def peer_lr(train: pd.DataFrame, test: pd.DataFrame, C: float = 10.0, max_iter: int = 1000) -> np.ndarray:
    """TF-IDF word + char n-grams over all text fields -> LogisticRegression (lbfgs); test predictions."""
    import warnings

    from sklearn.linear_model import LogisticRegression

    from .features import tfidf_matrix

    M = tfidf_matrix(train, test, {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = LogisticRegression(C=C, max_iter=max_iter).fit(M[: len(train)], train[TARGET].to_numpy())
    return model.predict(M[len(train) :])


def peer_svm(train: pd.DataFrame, test: pd.DataFrame, C: float = 0.5, max_iter: int = 1000) -> np.ndarray:
    """The data README's stronger peer: its TF-IDF -> one-vs-rest LinearSVC (liblinear), classes over the cores."""
    import warnings

    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.svm import LinearSVC

    from .features import tfidf_matrix

    M = tfidf_matrix(train, test, PEER_TFIDF)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = OneVsRestClassifier(LinearSVC(C=C, max_iter=max_iter), n_jobs=n_cpus())
        model.fit(M[: len(train)], train[TARGET].to_numpy())
    return model.predict(M[len(train) :])


PEERS = {"lr": ("peer: TF-IDF + LogReg", peer_lr), "svm": ("peer: TF-IDF + LinearSVC", peer_svm)}


def peer_names(bcfg: dict, n_classes: int) -> list[str]:
    """bench.peers, or by default both; above bench.lr_max_classes (200) classes only the LinearSVC
    peer: lbfgs keeps ~20 copies of a classes x columns weight matrix (~80 GiB at 864 x 600k)."""
    names = bcfg.get("peers")  # [] = no peers (e.g. an OOF-vs-test check of the folds)
    if names is None:
        names = ["lr", "svm"] if n_classes <= int(bcfg.get("lr_max_classes", 200)) else ["svm"]
    unknown = set(names) - set(PEERS)
    if unknown:
        raise DataError(f"config bench.peers: unknown {sorted(unknown)} (one of {sorted(PEERS)})")
    return list(names)


def make_resplit(cfg: dict, kind: str, seed: int = 0) -> Path:
    """DATA's train split cut into a catalogue of its own, {out_dir}/resplit/: train.parquet (4/5 of
    the rows), test.parquet and solution.csv (the other fifth), images/ as links to DATA's photos.
    The cut is fold 0 of `folds.assign_folds` (k 5, this seed), so a class of one row, or of one
    cluster, stays in train and every pseudo-test class has training rows; `grouped` keeps each
    near-duplicate cluster of train (folds.dups settings) on one side. Returns the folder."""
    import os

    from . import dups
    from .data import load_split
    from .folds import assign_folds

    if kind not in ("grouped", "random"):
        raise DataError(f"config bench.resplit: grouped or random, not {kind!r}")
    src = Path(cfg["data_dir"])
    train = load_split(src, "train")
    groups = None
    if kind == "grouped":
        dcfg = dups.dups_config(cfg)
        if dcfg is None:
            raise DataError("config bench.resplit: grouped needs the near-duplicate clusters (folds.dups is off)")
        groups = dups.find_clusters(train, train.iloc[:0], dcfg)[0]["cluster"].to_numpy()
    held = assign_folds(train[TARGET].to_numpy(), 5, seed, groups) == 0
    raw = pd.read_parquet(src / "train.parquet")
    raw = raw.set_index(ID).loc[train[ID]].reset_index()  # the loader's row order
    dst = Path(cfg["out_dir"]) / "resplit"
    if dst.exists():
        import shutil

        shutil.rmtree(dst)
    (dst / "images" / "train").mkdir(parents=True)
    (dst / "images" / "test").mkdir(parents=True)
    raw[~held].to_parquet(dst / "train.parquet", index=False)
    raw[held].drop(columns=[c for c in (TARGET, "category_name") if c in raw.columns]).to_parquet(
        dst / "test.parquet", index=False
    )
    raw.loc[held, [ID, TARGET]].to_csv(dst / "solution.csv", index=False)
    for pid, is_test, path in zip(train[ID], held, train["image_path"]):
        if isinstance(path, str):  # the loader found the file (None or NaN: missing)
            os.symlink(Path(path).resolve(), dst / "images" / ("test" if is_test else "train") / f"{pid}.jpg")
    log.info(
        "bench: resplit %s (seed %d) of %s: %d train / %d pseudo-test rows (%d classes held out of %d) -> %s",
        kind,
        seed,
        src,
        int((~held).sum()),
        int(held.sum()),
        train.loc[held, TARGET].nunique(),
        train[TARGET].nunique(),
        dst,
    )
    return dst


def _bench_data(cfg: dict) -> tuple[dict, Path]:
    """The config on the catalogue the bench runs (DATA, or its resplit) and that catalogue's solution.csv."""
    bcfg = cfg.get("bench") or {}
    if bcfg.get("resplit"):
        cfg = {**cfg, "data_dir": str(make_resplit(cfg, bcfg["resplit"], int(bcfg.get("resplit_seed", 0))))}
    sol_path = Path(cfg["data_dir"]) / "solution.csv"
    if not sol_path.is_file():
        raise DataError(f"{sol_path}: missing file (bench scores the test rows against it)")
    return cfg, sol_path


def _pipeline(cfg: dict) -> dict:
    """folds -> features -> train -> blend in this process, each stage timed; the report."""
    from .blend import run_blend
    from .features import make_features
    from .folds import make_folds
    from .heads import train_heads
    from .report import make_report

    stages, outs, t_all = {}, {}, time.time()
    for name, fn in (
        ("folds", lambda: make_folds(cfg)),
        ("features", lambda: make_features(cfg)),
        ("train", lambda: train_heads(cfg)),
        ("blend", lambda: run_blend(cfg)),
    ):
        t0 = time.time()
        outs[name] = fn()
        stages[name] = round(time.time() - t0, 1)
        log.info("bench: %s in %.1fs, peak RSS %.2f GiB", name, stages[name], peak_rss_gib())
    make_report(cfg)
    # the peak before the peer: its lbfgs over 100k+ sparse columns is memory-hungry
    return {
        "stages": stages,
        "heads": outs["train"],
        "blend": outs["blend"],
        "seconds": round(time.time() - t_all, 1),
        "peak_rss_gib": peak_rss_gib(),
    }


def _test_labels(cfg: dict, sol_path: Path):
    """(train, test, the test rows' labels in test order) of the bench's catalogue."""
    train, test = load_data(cfg["data_dir"])
    sol = read_labels(sol_path, np.unique(label_array(train[TARGET]))).set_index(ID)[TARGET]
    y_test = sol.reindex(test[ID]).to_numpy()
    if pd.isna(y_test).any():
        raise DataError(f"{sol_path}: does not cover every test product_id")
    return train, test, y_test


def _test_f1(y_test, pred) -> float:
    from sklearn.metrics import f1_score

    return round(float(f1_score(y_test, pred, average="weighted", zero_division=0)), 4)


def _scored(cfg: dict, names: list[str], y_test) -> list[dict]:
    """Each head's and the blend's OOF and test weighted F1, from their files."""
    from . import oof

    rows = []
    for name in names:
        r = oof.load(cfg["out_dir"], name)
        oof_f1 = round(r["metrics"]["overall"]["weighted_f1"], 4)
        test_ = _test_f1(y_test, r["classes"][r["test"].argmax(1)])
        rows.append(
            {
                "model": name,
                "oof_weighted_f1": oof_f1,
                "test_weighted_f1": test_,
                "oof_minus_test": round(oof_f1 - test_, 4),
            }
        )
    return rows


def _peers(cfg: dict, train, test, y_test) -> tuple[list[dict], dict]:
    """The peers fit on the same train rows and scored on the same test rows; a failing peer (memory,
    a library error) is reported, never loses the pipeline's results."""
    bcfg = cfg.get("bench") or {}
    peer_s, peer_rows = {}, []
    for key in peer_names(bcfg, int(train[TARGET].nunique())):
        label, fn = PEERS[key]
        t0 = time.time()
        row = {"model": label, "oof_weighted_f1": None}
        try:
            max_iter = int(bcfg.get(f"peer_{key}_max_iter", bcfg.get("peer_max_iter", 1000) if key == "lr" else 1000))
            row.update(test_weighted_f1=_test_f1(y_test, fn(train, test, max_iter=max_iter)), max_iter=max_iter)
        except Exception as exc:  # noqa: BLE001
            log.error("bench: peer %s failed: %s: %s", label, type(exc).__name__, exc)
            row.update(test_weighted_f1=None, error=f"{type(exc).__name__}: {exc}")
        peer_s[key] = round(time.time() - t0, 1)
        log.info("bench: %s in %.1fs: test weighted F1 %s", label, peer_s[key], row["test_weighted_f1"])
        peer_rows.append(row)
    return peer_rows, peer_s


def _record(cfg: dict, run: dict, rows: list[dict], peer_rows: list[dict], peer_s: dict, train, test) -> dict:
    """results.json: the scores, the folds' policy, the stages' and heads' seconds, peak RSS, image rate."""
    bcfg = cfg.get("bench") or {}
    n_heads = len(run["heads"])
    rates = []
    for meta in (Path(cfg["out_dir"]) / "features").glob("**/meta.json"):
        m = json.loads(meta.read_text())
        if m.get("set", {}).get("kind") == "image" and m.get("rate_per_s"):
            rates.append(m["rate_per_s"])
    blend_f1 = rows[n_heads]["test_weighted_f1"]
    best_test_head = max(rows[:n_heads], key=lambda r: r["test_weighted_f1"])
    scored = [r for r in peer_rows if r["test_weighted_f1"] is not None]
    best_peer = max(scored, key=lambda r: r["test_weighted_f1"]) if scored else None
    fmeta = json.loads((Path(cfg["out_dir"]) / "folds" / "meta.json").read_text())
    audit = fmeta.get("dup_audit") or {}
    folds_info = {
        "group_col": fmeta.get("group_col"),
        "policy": fmeta.get("policy"),
        **{k: round(audit[k], 4) for k in ("p_test", "p_oof_plain", "p_oof_grouped", "p_oof_chosen") if k in audit},
    }
    return {
        "data": str(cfg["data_dir"]),
        "config": cfg.get("name"),
        "date": date.today().isoformat(),
        "resplit": {"kind": bcfg["resplit"], "seed": int(bcfg.get("resplit_seed", 0))} if bcfg.get("resplit") else None,
        "folds": folds_info,
        "blend_oof_minus_test": rows[n_heads]["oof_minus_test"],
        "best_head_by_test": {"model": best_test_head["model"], "test_weighted_f1": best_test_head["test_weighted_f1"]},
        "machine": f"{platform.machine()}, {n_cpus()} cores",
        "train_rows": len(train),
        "test_rows": len(test),
        "classes": int(train[TARGET].nunique()),
        "results": rows + peer_rows,
        "blend_chosen": run["blend"].get("chosen"),
        "stronger_peer": best_peer["model"] if best_peer else None,
        "error_ratio_blend_vs_peer": round((1 - blend_f1) / max(1 - best_peer["test_weighted_f1"], 1e-9), 3)
        if best_peer
        else None,
        "stage_seconds": run["stages"],
        "head_seconds": {n: m.get("seconds") for n, m in run["heads"].items()},
        "pipeline_seconds": run["seconds"],
        "peer_seconds": peer_s,
        "peak_rss_gib": run["peak_rss_gib"],
        "peak_rss_with_peer_gib": peak_rss_gib(),
        "image_embed_img_per_s": round(float(np.mean(rates)), 1) if rates else None,
    }


def _markdown(res: dict, n_heads: int) -> list[str]:
    rows, folds_info = res["results"], res["folds"]
    blend_f1, best = rows[n_heads]["test_weighted_f1"], res["best_head_by_test"]
    lines = [
        f"### {Path(res['data']).name} ({res['train_rows']} train / {res['test_rows']} test, "
        f"{res['classes']} classes), config `{res['config']}`, {res['date']}, {res['machine']}",
        "",
        "- folds: " + ", ".join(f"{k} {v}" for k, v in folds_info.items()),
        "",
        "| model | OOF weighted F1 | test weighted F1 | OOF - test |",
        "|---|---|---|---|",
    ]
    for r in rows:
        oof = "-" if r["oof_weighted_f1"] is None else f"{r['oof_weighted_f1']:.4f}"
        test_ = f"{r['test_weighted_f1']:.4f}" if r["test_weighted_f1"] is not None else f"failed ({r['error']})"
        gap = f"{r['oof_minus_test']:+.4f}" if r.get("oof_minus_test") is not None else "-"
        lines.append(f"| {r['model']} | {oof} | {test_} | {gap} |")
    return lines + [
        "",
        f"- blend: OOF - test {res['blend_oof_minus_test']:+.4f}; test {blend_f1:.4f} against the best head's "
        f"{best['test_weighted_f1']:.4f} ({best['model']})"
        + (
            f"; test = a {res['resplit']['kind']} resplit of train (seed {res['resplit']['seed']})"
            if res["resplit"]
            else ""
        ),
        f"- blend test error / stronger peer's ({res['stronger_peer']}) test error: "
        f"**{res['error_ratio_blend_vs_peer']}** (goal <= 0.75)"
        if res["stronger_peer"]
        else "- no peer was run (bench.peers: [])",
        "- wall time: "
        + ", ".join(f"{k} {v}s" for k, v in res["stage_seconds"].items())
        + f"; pipeline {res['pipeline_seconds']}s; peers "
        + (", ".join(f"{k} {v}s" for k, v in res["peer_seconds"].items()) or "none"),
        "- heads: " + ", ".join(f"{k} {v}s" for k, v in res["head_seconds"].items()),
        f"- peak RSS: pipeline {res['peak_rss_gib']} GiB, with the peer {res['peak_rss_with_peer_gib']} GiB; "
        + (
            f"image embedding {res['image_embed_img_per_s']} img/s"
            if res["image_embed_img_per_s"]
            else "no image set embedded"
        ),
    ]


def run_bench(cfg: dict) -> dict:
    """The module's run: the catalogue -> the pipeline -> every head and the blend scored -> the
    peers -> results.json and results.md (-> the ablation)."""
    cfg, sol_path = _bench_data(cfg)
    run = _pipeline(cfg)
    train, test, y_test = _test_labels(cfg, sol_path)
    rows = _scored(cfg, [*run["heads"], cfg.get("blend", {}).get("name", "blend")], y_test)
    peer_rows, peer_s = _peers(cfg, train, test, y_test)
    res = _record(cfg, run, rows, peer_rows, peer_s, train, test)
    out = Path(cfg["out_dir"]) / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=2))
    lines = _markdown(res, len(run["heads"]))
    if (cfg.get("bench") or {}).get("ablation", True):  # each component on / off, from the same files
        from .ablation import run_ablation

        res["ablation"] = run_ablation(cfg)
        (out / "results.json").write_text(json.dumps(res, indent=2))
        lines += [
            "",
            "Ablation (OOF files held fixed; `bench/ablation.md`):",
            "",
            *(out / "ablation.md").read_text().splitlines(),
        ]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return res


def _image_bench_setup(cfg: dict) -> dict:
    """What both image paths run on: the set's options, the fine-tuning's, the data, an 80% sample
    of train as a fold's training rows, and the results' skeleton."""
    from .backbones import device
    from .data import fingerprint
    from .features import feature_sets, load_for_features
    from .features.backbone import _batch_size

    bcfg = (cfg.get("bench") or {}).get("images") or {}
    name, epochs, repeats = bcfg.get("set", "image"), int(bcfg.get("epochs", 1)), int(bcfg.get("repeats", 2))
    sets = feature_sets(cfg)
    if name not in sets or sets[name]["kind"] != "image":
        raise DataError(f"bench.images.set: {name!r} is not an image set of the config ({sorted(sets)})")
    opts = dict(sets[name])
    train, test = load_for_features(cfg)
    classes, y = np.unique(train[TARGET].to_numpy(), return_inverse=True)
    fit = np.flatnonzero(np.random.default_rng(0).random(len(train)) < 0.8)  # fold-like training rows
    out = Path(cfg["out_dir"]) / "bench"
    out.mkdir(parents=True, exist_ok=True)
    res = {
        "set": name,
        "model": opts.get("model"),
        "image_size": opts.get("image_size"),
        "epochs": epochs,
        "device": str(device()),
        "cpus": n_cpus(),
        "train_rows": len(train),
        "test_rows": len(test),
        "fit_rows": len(fit),
        "order": [],
        "runs": [],
    }
    return {
        "opts": opts,
        "ft": dict(opts.get("finetune") or {"epochs": epochs, "lr": 3e-4, "batch_size": 32}, epochs=epochs),
        "train": train,
        "test": test,
        "y": y,
        "n_classes": len(classes),
        "fit": fit,
        "bs": _batch_size(opts),
        "workers": opts.get("workers"),
        "out": out,
        "cache_root": out / "_images_bench",
        "data_fp": fingerprint(cfg["data_dir"]),
        "repeats": repeats,
        "res": res,
    }


def _warm_up(b: dict) -> None:
    """The model's kernels for inference and training, untimed."""
    from .backbones import embed, finetune
    from .features.backbone import _build

    enc = _build(b["opts"])
    warm = [p for p in b["train"]["image_path"] if p is not None][: 2 * b["bs"]]
    embed(enc, "image", warm, b["bs"], b["workers"], desc="warm-up")
    finetune(
        enc,
        "image",
        warm,
        b["y"][: len(warm)],
        b["n_classes"],
        epochs=1,
        batch_size=b["ft"].get("batch_size", 32),
        workers=b["workers"],
        desc="warm-up",
    )


def _time_path(b: dict, path_kind: str):
    """One timed run of a path: decode (the cache is removed first, so every decode-once run decodes),
    the frozen embedding, the fine-tuning, the embedding of train and test. (times, frozen, encoder)."""
    import shutil

    from .backbones import embed, finetune
    from .features.backbone import _build, _items

    use = {**b["opts"], "image_cache": path_kind == "decode_once"}
    shutil.rmtree(b["cache_root"], ignore_errors=True)
    ctx = {"root": b["cache_root"], "data_fp": b["data_fp"]}
    bs, workers, train, fit = b["bs"], b["workers"], b["train"], b["fit"]
    times, t_all = {}, time.time()
    enc = _build(use)
    t0 = time.time()
    items_tr = _items(train, use, "train", enc.size, ctx)
    items_te = _items(b["test"], use, "test", enc.size, ctx)
    times["decode"] = round(time.time() - t0, 2)
    t0 = time.time()
    frozen, _, _ = embed(enc, "image", items_tr, bs, workers, desc=f"{path_kind} frozen")
    times["frozen_embed_train"] = round(time.time() - t0, 2)
    fit_items = items_tr[fit] if not isinstance(items_tr, list) else [items_tr[i] for i in fit]
    t0 = time.time()
    log_ = finetune(
        enc, "image", fit_items, b["y"][fit], b["n_classes"], workers=workers, desc=f"{path_kind} finetune", **b["ft"]
    )
    times["finetune"] = round(time.time() - t0, 2)
    t0 = time.time()
    embed(enc, "image", items_tr, bs, workers, desc=f"{path_kind} embed train")
    embed(enc, "image", items_te, bs, workers, desc=f"{path_kind} embed test")
    times["embed_train_test"] = round(time.time() - t0, 2)
    times["total"] = round(time.time() - t_all, 2)
    times["train_acc_last_epoch"] = round(log_["history"][-1]["train_acc"], 4)
    log.info("bench-images %s: %s", path_kind, times)
    return times, frozen, enc


IMAGE_KEYS = ["decode", "frozen_embed_train", "finetune", "embed_train_test", "total", "train_acc_last_epoch"]


def _image_summary(res: dict, frozen: dict) -> None:
    """Each path's mean over its runs, the frozen embeddings' agreement and the speed-up, into res."""
    import torch

    for path_kind in ("per_image", "decode_once"):
        runs = [r for p, r in zip(res["order"], res["runs"]) if p == path_kind]
        res[path_kind] = {
            k: round(float(np.mean([r[k] for r in runs])), 2 if k != "train_acc_last_epoch" else 4) for k in IMAGE_KEYS
        }
    res["frozen_identical"] = bool(np.array_equal(frozen["per_image"], frozen["decode_once"]))
    res["frozen_max_abs_diff"] = float(np.abs(frozen["per_image"] - frozen["decode_once"]).max())
    res["speedup"] = round(res["per_image"]["total"] / res["decode_once"]["total"], 3)
    res["torch_threads"] = torch.get_num_threads()


def _image_markdown(res: dict, size: int, repeats: int) -> list[str]:
    md = [
        f"# Image path: decoded per pass vs decode-once ({res['set']}: {res['model']} at {size} px, "
        f"{res['epochs']} epoch(s), {res['device']}, {res['cpus']} CPUs)",
        "",
        f"{res['train_rows']} train + {res['test_rows']} test rows; fine-tuned on {res['fit_rows']}. "
        f"Mean of {repeats} runs per path, order {' '.join(res['order'])}.",
        "",
        "| seconds | per image (today) | decode once |",
        "|---|---|---|",
    ]
    md += [f"| {k} | {res['per_image'][k]} | {res['decode_once'][k]} |" for k in IMAGE_KEYS]
    return md + [
        "",
        f"Speed-up (total): {res['speedup']}x. Frozen embeddings identical: {res['frozen_identical']} "
        f"(max |diff| {res['frozen_max_abs_diff']:.2e}).",
    ]


def run_image_bench(cfg: dict) -> dict:
    """`make bench-images`: one image set's fine-tuning + embedding, decoded per pass (from the
    paths, PIL transforms in DataLoader workers) against the decode-once cache (decoded once,
    timed; augmentation on the batch tensor), the same model, epochs and rows (an 80% sample of
    train, like a fold's training rows). After an untimed warm-up the two paths run in the order
    A B B A (`bench.images.repeats: 2`) and their mean seconds are reported, which cancels drift
    on a shared machine. Also checks that the frozen embeddings are identical.
    Config `bench.images: {set: image, epochs: 1, repeats: 2}`. Writes {out_dir}/bench/images.json, .md.
    """
    import shutil

    b = _image_bench_setup(cfg)
    res, repeats = b["res"], b["repeats"]
    _warm_up(b)
    frozen = {}
    for path_kind in (["per_image", "decode_once", "decode_once", "per_image"] * repeats)[: 2 * repeats]:
        times, X, enc = _time_path(b, path_kind)
        frozen.setdefault(path_kind, X)
        res["order"].append(path_kind)
        res["runs"].append(times)
    shutil.rmtree(b["cache_root"], ignore_errors=True)
    _image_summary(res, frozen)
    (b["out"] / "images.json").write_text(json.dumps(res, indent=2))
    md = _image_markdown(res, enc.size, repeats)
    (b["out"] / "images.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return res
