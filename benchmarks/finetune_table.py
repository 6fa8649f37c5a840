"""What per-fold fine-tuning on 2 cores buys: the frozen backbones, the photo backbone fine-tuned, and
MiniLM fine-tuned too, as blends over the heads of each row of one `make bench` run of
benchmarks/finetune_table.yaml (all three rows' feature sets and heads in one run, so the shared
sets and heads are computed once), each blend over 3 stacker seeds.

    python -m smart_product bench --config benchmarks/finetune_table.yaml --data ../shared/data/flipkart \
        out_dir=runs/ft/flipkart "bench.peers=[svm]" bench.ablation=false
    python benchmarks/finetune_table.py --run runs/ft/flipkart --seeds 0 1 2

For a run with `bench.resplit=grouped` (make bench RESPLIT=grouped) the test score is the
pseudo-test split's (RUN/resplit/solution.csv). Writes RUN/bench/finetune_table.md and .json: per
row its new heads' OOF / test, the blend's OOF over the stacker seeds (mean, sd) with its test
scores, the procedure chosen, and the row's time (the shared stages plus its own feature sets and
heads; the run's peak RSS is for all rows' sets together, an upper bound for each).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

BASE = ["tfidf_lr", "fields_lr", "knn_tfidf", "listing", "tfidf_lr_pl1"]
ROWS = {
    "frozen": {"key": "frozen", "heads": ["mlp", "lfda_knn"], "sets": ["image", "text"]},
    "photo fine-tuned": {
        "key": "photo",
        "heads": ["mlp_img", "lfda_img", "knn_img", "img_cls"],
        "sets": ["image_ft", "text"],
    },
    "+ MiniLM fine-tuned": {
        "key": "minilm",
        "heads": ["mlp_ft", "lfda_ft", "knn_img", "img_cls", "knn_txt", "txt_cls"],
        "sets": ["image_ft", "text_ft"],
    },
}
CONFIG = str(Path(__file__).with_name("finetune_table.yaml"))


def test_score(run: Path, name: str, data: Path) -> float:
    """The weighted F1 of oof/{name}'s test predictions against data's solution.csv."""
    from sklearn.metrics import f1_score

    from smart_product.data import read_labels

    ids, classes = np.load(run / "oof" / name / "test_ids.npy"), np.load(run / "oof" / name / "classes.npy")
    sol = read_labels(data / "solution.csv", classes).set_index("product_id")["category_id"]
    pred = classes[np.load(run / "oof" / name / "test.npy").argmax(1)]
    return round(float(f1_score(sol.reindex(ids).to_numpy(), pred, average="weighted", zero_division=0)), 4)


def set_seconds(run: Path, name: str) -> float:
    """A feature set's seconds: its meta.json, or the sum of its folds' (per-fold sets)."""
    folder = run / "features" / name
    metas = [folder / "meta.json"] if (folder / "meta.json").is_file() else sorted(folder.glob("fold*/meta.json"))
    return sum(float(json.loads(m.read_text()).get("seconds") or 0) for m in metas)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="the out_dir of the bench run")
    ap.add_argument("--config", default=CONFIG)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    run = Path(args.run).resolve()
    res = json.loads((run / "bench" / "results.json").read_text())
    data = run / "resplit" if res.get("resplit") else Path(res["data"])
    heads = {r["model"]: r for r in res["results"]}
    stages, head_s = res["stage_seconds"], res["head_seconds"]
    all_sets = {s for row in ROWS.values() for s in row["sets"]}
    shared_sets = sum(
        set_seconds(run, f.name) for f in (run / "features").iterdir() if f.is_dir() and f.name[0] != "_"
    ) - sum(set_seconds(run, s) for s in all_sets if (run / "features" / s).is_dir())
    out = {"run": str(run), "data": str(data), "resplit": res.get("resplit"), "rows": {}}
    lines = []
    for row, spec in ROWS.items():
        blends = []
        for seed in args.seeds:
            name = f"ft_{spec['key']}_{seed}"
            cmd = [sys.executable, "-m", "smart_product", "blend", "--config", args.config, "--data", str(data)]
            cmd += [f"out_dir={run}", f"seed={seed}", f"blend.name={name}"]
            cmd.append(f"blend.heads=[{','.join(BASE + spec['heads'])}]")
            subprocess.run(cmd, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
            w = json.loads((run / "oof" / name / "weights.json").read_text())
            oof = round(w["oof_refit"]["weighted_f1"], 4)
            blends.append({"seed": seed, "oof": oof, "test": test_score(run, name, data), "chosen": w["chosen"]})
        oofs = np.array([b["oof"] for b in blends])
        seconds = (
            stages["folds"]
            + shared_sets
            + sum(set_seconds(run, s) for s in spec["sets"])
            + sum(float(head_s.get(h) or 0) for h in BASE + spec["heads"])
            + stages["blend"]
        )
        out["rows"][row] = {
            "heads": {h: {k: heads[h][k] for k in ("oof_weighted_f1", "test_weighted_f1")} for h in spec["heads"]},
            "blends": blends,
            "oof_mean": round(float(oofs.mean()), 4),
            "oof_sd": round(float(oofs.std(ddof=1)), 4) if len(oofs) > 1 else None,
            "test_mean": round(float(np.mean([b["test"] for b in blends])), 4),
            "seconds": round(seconds),
        }
        r = out["rows"][row]
        new = ", ".join(f"{h} {v['oof_weighted_f1']:.4f} / {v['test_weighted_f1']:.4f}" for h, v in r["heads"].items())
        tests = " / ".join(f"{b['test']:.4f}" for b in blends)
        chosen = ", ".join(sorted({b["chosen"] for b in blends}))
        lines.append(
            f"| {row} | {new} | {r['oof_mean']:.4f} ({r['oof_sd']}) | {tests} | {chosen} | {seconds / 60:.1f} min |"
        )
    out["peak_rss_gib"] = res["peak_rss_gib"]
    table = "\n".join(
        [
            f"{data.name} ({res['train_rows']} train / {res['test_rows']} test rows, {res['classes']} classes)"
            + (f", {res['resplit']['kind']} resplit seed {res['resplit']['seed']}" if res.get("resplit") else "")
            + f"; stacker seeds {args.seeds}; peak RSS of the run (all rows' sets) {res['peak_rss_gib']} GiB",
            "",
            "| row | its heads: OOF / test | blend OOF: mean (sd) | blend test by seed | chosen | time |",
            "|---|---|---|---|---|---|",
            *lines,
        ]
    )
    print(table)
    (run / "bench" / "finetune_table.md").write_text(table + "\n")
    (run / "bench" / "finetune_table.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
