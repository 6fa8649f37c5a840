"""What per-fold fine-tuning on 2 cores buys: the frozen backbones, the photo backbone fine-tuned, and
MiniLM fine-tuned too, as blends over the heads of each row of one `make bench` run of
benchmarks/finetune_table.yaml (cpu-large) or finetune_table_xl.yaml (cpu-xl): all three rows' feature
sets and heads in one run, so the shared ones are computed once; the rows are the config's
`finetune_table` (the heads each adds to the heads no row names); each blend over 3 stacker seeds.

    python -m smart_product bench --config benchmarks/finetune_table.yaml --data ../shared/data/flipkart \
        out_dir=runs/ft/flipkart "bench.peers=[svm]" bench.ablation=false
    python benchmarks/finetune_table.py --run runs/ft/flipkart --seeds 0 1 2   # --config ..._xl.yaml for its runs

For a run with `bench.resplit=grouped` (make bench RESPLIT=grouped) the test score is the
pseudo-test split's (RUN/resplit/solution.csv). Writes RUN/bench/finetune_table.md and .json: per
row its new heads' OOF / test, the blend's OOF over the stacker seeds (mean, sd) with its test
scores, the procedure chosen, and the row's time (the folds and the shared feature sets, its own
feature sets and heads, and its blend: the mean over the seeds, a process each; the run's peak RSS
is for all rows' sets together, an upper bound for each).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

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


def blends(run: Path, config: str, data: Path, heads: list[str], tag: str, seeds, reuse: bool) -> list[dict]:
    """The blend over `heads`, once per stacker seed (a process each, named {tag}_{seed}): its OOF,
    its test score, the procedure chosen and its seconds."""
    out = []
    for seed in seeds:
        name = f"{tag}_{seed}"
        cmd = [sys.executable, "-m", "smart_product", "blend", "--config", config, "--data", str(data)]
        cmd += [f"out_dir={run}", f"seed={seed}", f"blend.name={name}", f"blend.heads=[{','.join(heads)}]"]
        timing = run / "oof" / name / "blend_seconds.json"
        if reuse and timing.exists():  # a blend an interrupted table already wrote
            blend_s = json.loads(timing.read_text())["seconds"]
        else:
            t0 = time.time()
            subprocess.run(cmd, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
            blend_s = time.time() - t0
            timing.write_text(json.dumps({"seconds": round(blend_s, 1)}))
        w = json.loads((run / "oof" / name / "weights.json").read_text())
        oof = round(w["oof_refit"]["weighted_f1"], 4)
        out.append(
            {
                "seed": seed,
                "oof": oof,
                "test": test_score(run, name, data),
                "chosen": w["chosen"],
                "seconds": round(blend_s),
            }
        )
    return out


def summary(bl: list[dict]) -> dict:
    oofs = np.array([b["oof"] for b in bl])
    return {
        "oof_mean": round(float(oofs.mean()), 4),
        "oof_sd": round(float(oofs.std(ddof=1)), 4) if len(oofs) > 1 else None,
        "test_mean": round(float(np.mean([b["test"] for b in bl])), 4),
    }


def run_seconds(run: Path, cfg: dict, res: dict, heads: list[str], blend_s: float) -> float:
    """A row's time: the folds, the feature sets its heads read (each once), its heads, its blend."""
    from smart_product.features import feature_sets

    sets = feature_sets(cfg)
    used = {f for h in heads for f in cfg["heads"][h.split("_pl")[0]]["features"] if f in sets}
    return (
        res["stage_seconds"]["folds"]
        + sum(set_seconds(run, f) for f in used)
        + sum(float(res["head_seconds"].get(h) or 0) for h in heads)
        + blend_s
    )


def bench_data(run: Path, res: dict) -> Path:
    """The data a bench run's test scores are for: its pseudo-test split's (RESPLIT) or the catalogue's."""
    return run / "resplit" if res.get("resplit") else Path(res["data"])


def heads_run(cfg: dict, res: dict) -> list[str]:
    """The config's heads that the run has results for, in config order. A head the run skipped
    (fields_lr above its max_classes) has no OOF files: it is named and left out."""
    from smart_product.heads import head_names

    ran = {r["model"] for r in res["results"]}
    skipped = [h for h in head_names(cfg) if h not in ran]
    if skipped:
        print(f"left out, the run has no OOF for them: {', '.join(skipped)}")
    return [h for h in head_names(cfg) if h in ran]


def table_args(description: str, config: str | None = None):
    """A table script's command line (--run, --config, --seeds, --reuse): (args, the run's folder,
    the config, the run's bench/results.json)."""
    from smart_product.config import load_config

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--run", required=True, help="the out_dir of the bench run")
    ap.add_argument("--config", default=config, required=config is None)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--reuse", action="store_true", help="keep the blends an earlier table wrote (and timed)")
    args = ap.parse_args()
    run = Path(args.run).resolve()
    return args, run, load_config(args.config), json.loads((run / "bench" / "results.json").read_text())


def main() -> None:
    args, run, cfg, res = table_args(__doc__.splitlines()[0], CONFIG)
    rows = cfg["finetune_table"]
    data = bench_data(run, res)
    heads = {r["model"]: r for r in res["results"]}
    base = [h for h in heads_run(cfg, res) if not any(h in row for row in rows.values())]
    out = {"run": str(run), "data": str(data), "resplit": res.get("resplit"), "base_heads": base, "rows": {}}
    lines = []
    for i, (row, own) in enumerate(rows.items()):
        bl = blends(run, args.config, data, base + own, f"ft_row{i}", args.seeds, args.reuse)
        seconds = run_seconds(run, cfg, res, base + own, np.mean([b["seconds"] for b in bl]))
        out["rows"][row] = {
            "heads": {h: {k: heads[h][k] for k in ("oof_weighted_f1", "test_weighted_f1")} for h in own},
            "blends": bl,
            **summary(bl),
            "seconds": round(seconds),
        }
        r = out["rows"][row]
        new = ", ".join(f"{h} {v['oof_weighted_f1']:.4f} / {v['test_weighted_f1']:.4f}" for h, v in r["heads"].items())
        tests = " / ".join(f"{b['test']:.4f}" for b in bl)
        chosen = ", ".join(sorted({b["chosen"] for b in bl}))
        lines.append(
            f"| {row} | {new} | {r['oof_mean']:.4f} ({r['oof_sd'] or 0:.4f}) | {tests} | {chosen} "
            f"| {seconds / 60:.1f} min |"
        )
    out["peak_rss_gib"] = res["peak_rss_gib"]
    table = "\n".join(
        [
            f"{data.name} ({res['train_rows']} train / {res['test_rows']} test rows, {res['classes']} classes)"
            + (f", {res['resplit']['kind']} resplit seed {res['resplit']['seed']}" if res.get("resplit") else "")
            + f"; config {cfg['name']}, base heads {', '.join(base)}; stacker seeds {args.seeds}; "
            f"peak RSS of the run (all rows' sets) {res['peak_rss_gib']} GiB",
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
