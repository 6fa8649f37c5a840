"""Does the OOF score predict the score on unseen data? `make bench` on resplits of train, over seeds.

For each kind (grouped: whole near-duplicate clusters held out; random: rows) and seed, runs

    python -m smart_product bench --config CONFIG --data DATA out_dir=OUT/{kind}-{seed} \
        bench.resplit={kind} bench.resplit_seed={seed} bench.ablation=false [SET ...]

(a fifth of train is the pseudo-test split, scored like solution.csv; src/smart_product/bench.py,
make_resplit), skipping a run whose bench/results.json is there, then writes OUT/resplit.md and
OUT/resplit.json: per run the blend's procedure, OOF, pseudo-test and |OOF - pseudo-test|, and the
best head by pseudo-test; per kind the mean and standard deviation over seeds (the seed spread).

    python benchmarks/resplit.py --config configs/cpu.yaml --data data/demo --out runs/resplit-demo \
        --kinds grouped random --seeds 0 1 2 [--set "bench.peers=[]" ...] [--collect]

--collect only reads the runs that are there. --blend-only reruns just the blend on runs whose
heads are there (a changed blend, the same heads) and rescores it into bench/results.json; with
--blend-src DIR that blend is another checkout's (DIR = its src/, e.g. a `git worktree` of an older
commit), so two blends are compared on the same heads.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np


def blend_again(run: Path, config: str, sets: list[str], blend_src: Path | None = None) -> None:
    """Rerun the blend of a finished resplit run from its heads' files (with the package in blend_src if
    given); rescore it in results.json."""
    from sklearn.metrics import f1_score

    from smart_product.data import read_labels

    data = run / "resplit"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "smart_product",
            "blend",
            "--config",
            config,
            "--data",
            str(data),
            f"out_dir={run.resolve()}",
            *sets,
        ],
        check=True,
        env={**os.environ, "PYTHONPATH": str(blend_src.resolve())} if blend_src else None,
    )
    res = json.loads((run / "bench" / "results.json").read_text())
    w = json.loads((run / "oof" / "blend" / "weights.json").read_text())
    ids, classes = np.load(run / "oof" / "blend" / "test_ids.npy"), np.load(run / "oof" / "blend" / "classes.npy")
    sol = read_labels(data / "solution.csv", classes).set_index("product_id")["category_id"]
    pred = classes[np.load(run / "oof" / "blend" / "test.npy").argmax(1)]
    test_f1 = round(float(f1_score(sol.reindex(ids).to_numpy(), pred, average="weighted", zero_division=0)), 4)
    row = next(r for r in res["results"] if r["model"] == "blend")
    row.update(
        oof_weighted_f1=round(w["oof_refit"]["weighted_f1"], 4),
        test_weighted_f1=test_f1,
        oof_minus_test=round(w["oof_refit"]["weighted_f1"] - test_f1, 4),
    )
    res.update(blend_chosen=w["chosen"], blend_oof_minus_test=row["oof_minus_test"])
    (run / "bench" / "results.json").write_text(json.dumps(res, indent=2))


def summarise(out: Path, runs: list[tuple[str, int, Path]]) -> dict:
    rows = []
    for kind, seed, run in runs:
        f = run / "bench" / "results.json"
        if not f.is_file():
            continue
        res = json.loads(f.read_text())
        blend = next(r for r in res["results"] if r["model"] == "blend")
        heads = [r for r in res["results"] if r["oof_weighted_f1"] is not None and r["model"] != "blend"]
        best = max(heads, key=lambda r: r["test_weighted_f1"])
        rows.append(
            {
                "kind": kind,
                "seed": seed,
                "chosen": res.get("blend_chosen"),
                "blend_oof": blend["oof_weighted_f1"],
                "blend_test": blend["test_weighted_f1"],
                "gap": round(abs(blend["oof_weighted_f1"] - blend["test_weighted_f1"]), 4),
                "best_head": best["model"],
                "best_head_test": best["test_weighted_f1"],
                "blend_minus_best_head": round(blend["test_weighted_f1"] - best["test_weighted_f1"], 4),
                "pipeline_s": res.get("pipeline_seconds"),
                "peak_rss_gib": res.get("peak_rss_gib"),
            }
        )
    lines = [
        "| resplit | seed | blend procedure | blend OOF | blend pseudo-test | abs(OOF - test) | best head "
        "(pseudo-test) | blend - best head | pipeline s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['kind']} | {r['seed']} | {r['chosen']} | {r['blend_oof']:.4f} | {r['blend_test']:.4f} | "
        f"{r['gap']:.4f} | {r['best_head']} {r['best_head_test']:.4f} | {r['blend_minus_best_head']:+.4f} | "
        f"{r['pipeline_s']} |"
        for r in rows
    ]
    summary = {}
    for kind in dict.fromkeys(r["kind"] for r in rows):
        rk = [r for r in rows if r["kind"] == kind]
        summary[kind] = {
            k: {
                "mean": round(float(np.mean([r[k] for r in rk])), 4),
                "sd": round(float(np.std([r[k] for r in rk], ddof=1)), 4) if len(rk) > 1 else None,
            }
            for k in ("blend_oof", "blend_test", "gap", "best_head_test", "blend_minus_best_head")
        }
        summary[kind]["seeds"] = len(rk)
        lines.append(
            f"| {kind}: mean (sd) over {len(rk)} | | | "
            + " | ".join(
                f"{summary[kind][k]['mean']:.4f}"
                + (f" ({summary[kind][k]['sd']:.4f})" if summary[kind][k]["sd"] is not None else "")
                for k in ("blend_oof", "blend_test", "gap", "best_head_test", "blend_minus_best_head")
            )
            + " | |"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "resplit.json").write_text(json.dumps({"runs": rows, "summary": summary}, indent=2))
    (out / "resplit.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return summary


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--kinds", nargs="+", default=["grouped", "random"], choices=["grouped", "random"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--set", action="append", default=[], help="a config override key=value (repeatable)")
    ap.add_argument("--collect", action="store_true", help="only summarise the runs that are there")
    ap.add_argument("--blend-only", action="store_true", help="rerun the blend of finished runs and rescore it")
    ap.add_argument("--blend-src", type=Path, help="with --blend-only: the src/ of the checkout whose blend runs")
    a = ap.parse_args()
    runs = [(kind, seed, a.out / f"{kind}-{seed}") for kind in a.kinds for seed in a.seeds]
    for kind, seed, run in runs:
        if a.collect:
            break
        if a.blend_only:
            if (run / "bench" / "results.json").is_file():
                blend_again(run, a.config, a.set, a.blend_src)
            continue
        if (run / "bench" / "results.json").is_file():
            print(f"{run}: done, not rerun", flush=True)
            continue
        run.mkdir(parents=True, exist_ok=True)
        with open(run / "bench.log", "w") as log:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "smart_product",
                    "bench",
                    "--config",
                    a.config,
                    "--data",
                    a.data,
                    f"out_dir={run.resolve()}",
                    f"bench.resplit={kind}",
                    f"bench.resplit_seed={seed}",
                    "bench.ablation=false",
                    *a.set,
                ],
                check=True,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
    summarise(a.out, runs)


if __name__ == "__main__":
    main()
