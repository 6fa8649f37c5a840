"""`test_from: folds` or `full`, decided inside train (no test labels): which test prediction is better?

    python benchmarks/test_from.py --config configs/cpu-xl.yaml --data ../shared/data/ozon \
        --out runs/s14-ozon-b --heads fields_net,knn_title --holdout 0

Fold `--holdout` plays the test split: the other folds play train, and its own K-1 folds the
CV. For each head, `folds` is the mean of the K-1 models that each leave one of those folds out
(what the pipeline averages over the test rows), `full` is one model fit on all of them (fold -1,
`test_from: full`). Both are scored (weighted F1, log loss) on the held-out fold, whose labels no
model saw. The features are the held-out fold's (per-fold sets were fit without its labels). No
calibration or logit adjustment: the question is the fit itself. Prints one JSON line per head.
"""

import argparse
import json
import time

import numpy as np

from smart_product.config import load_config
from smart_product.data import ID, TARGET, load_split
from smart_product.folds import load_folds
from smart_product.heads import make_head
from smart_product.heads.calibrate import log_loss
from smart_product.heads.common import scores
from smart_product.heads.loop import _head_input, _rows, head_configs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True, help="a run folder with features/ and folds/")
    ap.add_argument("--heads", required=True, help="comma-separated head names of the config")
    ap.add_argument("--holdout", type=int, default=0, help="the fold that plays the test split")
    a = ap.parse_args()
    cfg = load_config(a.config, [f"out_dir={a.out}"], data_dir=a.data)
    seed = int(cfg.get("seed", 0))
    train, test = load_split(a.data, "train", parse_text=False), load_split(a.data, "test", parse_text=False)
    fold = load_folds(cfg, train)
    classes, y = np.unique(train[TARGET].to_numpy(), return_inverse=True)
    hold = fold == a.holdout
    inner = sorted(int(f) for f in np.unique(fold[~hold]) if f >= 0)
    heads = head_configs(cfg)
    unknown = [h for h in a.heads.split(",") if h not in heads]
    if unknown:
        raise SystemExit(f"--heads: {unknown} not in {a.config}'s heads ({', '.join(heads)})")
    for name in a.heads.split(","):
        hcfg = heads[name]
        Xtr, _ = _head_input(cfg, name, hcfg, a.holdout, train[ID].to_numpy(), test[ID].to_numpy())
        X_hold, y_hold = _rows(Xtr, hold), y[hold]

        def fit_predict(rows, hcfg=hcfg, Xtr=Xtr, X_hold=X_hold):
            m = make_head(hcfg["kind"], hcfg.get("params") or {}, seed).fit(_rows(Xtr, rows), y[rows], len(classes))
            return np.asarray(m.predict_proba(X_hold), np.float32)

        t0 = time.time()
        P_folds = np.mean([fit_predict(~hold & (fold != j)) for j in inner], axis=0)
        t1 = time.time()
        P_full = fit_predict(~hold)
        t2 = time.time()
        res = {"head": name, "holdout_fold": a.holdout, "rows": int(hold.sum())}
        for tag, P, s in (("folds", P_folds, t1 - t0), ("full", P_full, t2 - t1)):
            res[tag] = {
                "weighted_f1": round(scores(y_hold, P.argmax(1))["weighted_f1"], 4),
                "logloss": round(log_loss(P, y_hold), 4),
                "seconds": round(s, 1),
            }
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
