"""Does each head's OOF score predict its score on unseen rows? Per head of a finished run whose test
split has labels (a resplit's pseudo-test, or a catalogue's solution.csv):

- OOF weighted F1 and the test weighted F1 of the head's test.npy (the fold mean, or its full fit);
- per fold model k: its weighted F1 on fold k's OOF rows against its own test probabilities'
  (test_folds.npy[k]) on the test rows, and the mean over k of OOF - test (the fold models' gap:
  the same model on both sides, so the difference is the rows alone);
- the label-free estimate of that gap (smart_product.blend.shift, the blend's shift guard): each fold
  model's accuracy on its OOF rows against its average thresholded confidence on the test rows,
  beside the true accuracy gap;
- the blends given with --blends (e.g. one with and one without fusion_cls: `make blend` with
  blend.name=... "blend.heads=[...]"): OOF, test and OOF - test.

    python benchmarks/shift.py --run runs/rs/grouped-0 --data runs/rs/grouped-0/resplit \
        --blends blend blend_no_fusion --out runs/rs/grouped-0/bench/shift.json
    python benchmarks/shift.py --table runs/rs/*/bench/shift.json   # the runs side by side, as markdown
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def head_shift(run: Path, data: Path, name: str) -> dict:
    import pandas as pd
    from sklearn.metrics import f1_score

    from smart_product import oof
    from smart_product.blend.shift import fold_shift
    from smart_product.data import read_labels

    r = oof.load(run, name)
    classes = r["classes"]
    sol = read_labels(data / "solution.csv", classes).set_index("product_id")["category_id"]
    yt = np.searchsorted(classes, sol.reindex(r["test_ids"]).to_numpy())
    folds_df = pd.read_csv(run / "folds" / "folds.csv").set_index("product_id")["fold"]
    folds = folds_df.reindex(r["train_ids"]).to_numpy()
    train = pd.read_parquet(data / "train.parquet", columns=["product_id", "category_id"]).set_index("product_id")
    y = np.searchsorted(classes, train["category_id"].reindex(r["train_ids"]).to_numpy())
    has = ~np.isnan(r["oof"]).any(1)

    def wf1(t, p):
        return float(f1_score(t, p, average="weighted", zero_division=0))

    out = {
        "head": name,
        "oof": round(wf1(y[has], r["oof"][has].argmax(1)), 4),
        "test": round(wf1(yt, r["test"].argmax(1)), 4),
    }
    out["oof_minus_test"] = round(out["oof"] - out["test"], 4)
    if r["test_folds"] is None or r["metrics"].get("kind") == "blend":
        return out
    ks = sorted(set(folds[has].tolist()))
    T = [np.asarray(r["test_folds"][i], np.float32) for i in range(len(ks))]
    per = []
    for i, k in enumerate(ks):
        rows = has & (folds == k)
        per.append({"fold": int(k), "oof": wf1(y[rows], r["oof"][rows].argmax(1)), "test": wf1(yt, T[i].argmax(1))})
    est = fold_shift(r["oof"], y, folds, has, T)
    out.update(
        fold_oof=round(float(np.mean([p["oof"] for p in per])), 4),
        fold_test=round(float(np.mean([p["test"] for p in per])), 4),
        fold_gap=round(float(np.mean([p["oof"] - p["test"] for p in per])), 4),
        fold_gap_sd=round(float(np.std([p["oof"] - p["test"] for p in per], ddof=1)), 4),
        acc_gap=round(est["oof_acc"] - float(np.mean([(Ti.argmax(1) == yt).mean() for Ti in T])), 4),
        est_acc_gap=round(est["gap"], 4),
    )
    return out


def agreement(run: Path, names: list[str]) -> dict:
    """Each head's agreement with the others' mean, OOF rows against test rows (blend/shift.py)."""
    import pandas as pd

    from smart_product import oof
    from smart_product.blend.shift import agreement_shift

    loaded = {n: oof.load(run, n) for n in names}
    names = [n for n in names if loaded[n]["test_folds"] is not None]
    runs = [loaded[n] for n in names]
    folds = pd.read_csv(run / "folds" / "folds.csv").set_index("product_id")["fold"].reindex(runs[0]["train_ids"])
    has = ~np.isnan(runs[0]["oof"]).any(1)
    res = agreement_shift(
        [np.nan_to_num(r["oof"]) for r in runs], [r["test_folds"] for r in runs], folds.to_numpy(), has
    )
    return {n: {k: round(v, 4) for k, v in a.items()} for n, a in zip(names, res)}


def table(files: list[Path]) -> str:
    lines = [
        "| run | head | OOF | test | OOF - test | fold models: OOF - test (sd) | accuracy gap: true / estimated "
        "| agreement with the others: OOF / test / drop |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f in files:
        res = json.loads(f.read_text())
        for h in res["heads"] + res.get("blends", []):
            fold = f"{h['fold_gap']:+.4f} ({h['fold_gap_sd']:.4f})" if "fold_gap" in h else "-"
            acc = f"{h['acc_gap']:+.4f} / {h['est_acc_gap']:+.4f}" if "acc_gap" in h else "-"
            ag = res.get("agreement", {}).get(h["head"])
            ag = f"{ag['agree_oof']:.4f} / {ag['agree_test']:.4f} / {ag['drop']:+.4f}" if ag else "-"
            lines.append(
                f"| {res['run']} | {h['head']} | {h['oof']:.4f} | {h['test']:.4f} | {h['oof_minus_test']:+.4f} | "
                f"{fold} | {acc} | {ag} |"
            )
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path)
    ap.add_argument("--data", type=Path, help="the catalogue the run read, with solution.csv")
    ap.add_argument("--heads", nargs="*", help="default: every finished head folder that is not a blend")
    ap.add_argument("--blends", nargs="*", default=["blend"])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--table", nargs="*", type=Path, help="only print the table of these shift.json files")
    a = ap.parse_args()
    if a.table:
        print(table(a.table))
        return
    from smart_product import oof

    names = a.heads or [
        n for n in oof.available(a.run) if oof.read_metrics(a.run, n).get("kind") != "blend" and n not in a.blends
    ]
    res = {
        "run": str(a.run),
        "heads": [head_shift(a.run, a.data, n) for n in names],
        "blends": [head_shift(a.run, a.data, n) for n in a.blends if oof.read_metrics(a.run, n)],
        "agreement": agreement(a.run, names),
    }
    out = a.out or a.run / "bench" / "shift.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(table([out]))


if __name__ == "__main__":
    main()
