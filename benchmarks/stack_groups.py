"""The stacker's group evidence, variant by variant, on a finished run's OOF files (no head refit).

    python benchmarks/stack_groups.py --config configs/cpu-xl.yaml --data ../shared/data/ozon \
        --out runs/i11-ozon-clean none shop_id title:1 shop_id,title:1,title:2 shop_id,title:1,title:2@3

A variant is `none` or comma-separated group specs (blend.stack.groups syntax), optionally
`@alpha` (group_alpha), `~hidden` (hidden units) and `#bags` (nets averaged, each early-stopped
on its own inner split). Each runs stack.cross_fit (fold k's stacker fit on the other folds) and
prints OOF weighted F1, and test weighted F1 when the data folder has solution.csv (for
reporting; choose by OOF). `--seeds n` fits each variant with n stacker seeds (the config's seed,
+1, ...) and also prints their mean and standard deviation: the stacker's own spread, against
which a variant's gain is read.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np

from smart_product.blend.stack import cross_fit, row_side
from smart_product.config import load_config
from smart_product.data import TARGET, load_split, read_labels
from smart_product.folds import load_folds
from smart_product.heads import head_names, scores
from smart_product.oof import available
from smart_product.oof import load as load_oof


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True, help="a run folder with oof/{head}/ and folds/")
    ap.add_argument("--heads", help="comma-separated (default: every trained head the config enables)")
    ap.add_argument("--seeds", type=int, default=1, help="stacker seeds per variant (default 1)")
    ap.add_argument("variants", nargs="+")
    a = ap.parse_args()
    cfg = load_config(a.config, [f"out_dir={a.out}"], data_dir=a.data)
    heads = a.heads.split(",") if a.heads else [h for h in available(a.out) if h in head_names(cfg)]
    runs = [load_oof(a.out, h) for h in heads]
    train = load_split(a.data, "train", parse_text=False)
    classes = runs[0]["classes"]
    y, folds = np.searchsorted(classes, train[TARGET].to_numpy()), load_folds(cfg, train)
    has = ~np.isnan(runs[0]["oof"]).any(1)
    oofs, tests = [np.nan_to_num(r["oof"]) for r in runs], [r["test_folds"] for r in runs]
    sol = Path(a.data) / "solution.csv"
    y_test = (
        read_labels(sol, classes).set_index("product_id")[TARGET].reindex(runs[0]["test_ids"]).to_numpy()
        if sol.is_file()
        else None
    )
    print("heads:", ", ".join(heads))
    for v in a.variants:
        v_, _, bags = v.partition("#")
        spec, _, hidden = v_.partition("~")
        spec, _, alpha = spec.partition("@")
        params = {
            "seed": int(cfg.get("seed", 0)),
            **(cfg["blend"].get("stack") or {}),
            "groups": [] if spec == "none" else spec.split(","),
        }
        params.update(
            {"hidden": int(hidden)} if hidden else {},
            **({"group_alpha": float(alpha)} if alpha else {}),
            **({"bags": int(bags)} if bags else {}),
        )
        extra, extra_test, g, g_test = row_side(cfg, params["groups"])
        runs_ = []
        for s in range(a.seeds):
            t0 = time.time()
            oof, test, _ = cross_fit(
                oofs,
                tests,
                y,
                folds,
                has,
                len(classes),
                {**params, "seed": params["seed"] + s},
                extra,
                extra_test,
                g,
                g_test,
            )
            res = {
                "variant": v,
                "seed": params["seed"] + s,
                "oof_weighted_f1": round(scores(y[has], np.nan_to_num(oof)[has].argmax(1))["weighted_f1"], 4),
                "test_weighted_f1": None
                if y_test is None
                else round(scores(y_test, classes[test.argmax(1)])["weighted_f1"], 4),
                "seconds": round(time.time() - t0, 1),
            }
            runs_.append(res)
            print(json.dumps(res), flush=True)
        if a.seeds > 1:
            summary = {"variant": v, "seeds": a.seeds}
            for m in ("oof_weighted_f1", "test_weighted_f1"):
                vals = [r[m] for r in runs_ if r[m] is not None]
                if vals:
                    summary[m] = {"mean": round(float(np.mean(vals)), 4), "sd": round(float(np.std(vals, ddof=1)), 4)}
            print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
