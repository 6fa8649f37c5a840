"""What the fusion head buys, from one `make bench` run of a fusion table config
(benchmarks/fusion_table.yaml on cpu, fusion_table_large.yaml on cpu-large-ft, fusion_table_xl.yaml on
cpu-xl): the config's heads, its fusion set, and two single-view fine-tuned classifiers (`fusion_table:
single`): the fusion set with its photo branch alone and with its text branch alone, or, on
cpu-large-ft, the photo and text routes' own classifiers. Heads in `fusion_table: table_only` are
the table's, not the config's: the stacker rows leave them out.

    python -m smart_product bench --config benchmarks/fusion_table.yaml --data data/demo \\
        out_dir=runs/fusion-table/demo bench.ablation=false "bench.peers=[]"
    python benchmarks/fusion_table.py --run runs/fusion-table/demo --config benchmarks/fusion_table.yaml

Rows: each single-view classifier (the better one by OOF marked), the fixed mean of their
probabilities, the fusion head: OOF and test weighted F1 (a `bench.resplit` run: its pseudo-test
split), the seconds of its set (every fold: training and embedding; the first set to need a
lower-layer cache also built it) and its head, and its set's peak RSS. Then the stacker over the
config's heads without the fusion head and with it, over stacker seeds (mean, sd), a blend process
each (benchmarks/finetune_table.py). Writes RUN/bench/fusion_table.md and .json.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from finetune_table import bench_data, blends, heads_run, run_seconds, set_seconds, summary, table_args


def scored(run: Path, data: Path, P_oof: np.ndarray, P_test: np.ndarray, head: str) -> tuple[float, float]:
    """OOF weighted F1 (never-validated rows left out) and test weighted F1 of probabilities in head's class order."""
    from sklearn.metrics import f1_score

    from smart_product.data import TARGET, label_array, load_split, read_labels

    classes = np.load(run / "oof" / head / "classes.npy")
    y = label_array(load_split(data, "train", parse_text=False)[TARGET])
    has = ~np.isnan(P_oof).any(1)
    oof = f1_score(y[has], classes[P_oof[has].argmax(1)], average="weighted", zero_division=0)
    ids = np.load(run / "oof" / head / "test_ids.npy")
    sol = read_labels(data / "solution.csv", classes).set_index("product_id")["category_id"].reindex(ids)
    test = f1_score(sol.to_numpy(), classes[P_test.argmax(1)], average="weighted", zero_division=0)
    return round(float(oof), 4), round(float(test), 4)


def set_peak(run: Path, name: str) -> float | None:
    metas = sorted((run / "features" / name).glob("fold*/meta.json"))
    peaks = [json.loads(m.read_text()).get("peak_rss_gib") for m in metas]
    return max((p for p in peaks if p is not None), default=None)


def main() -> None:
    args, run, cfg, res = table_args(__doc__.splitlines()[0])
    spec = cfg["fusion_table"]
    singles, fusion = spec["single"], spec["fusion"]
    data = bench_data(run, res)
    loaded = {
        h: (np.load(run / "oof" / h / "oof.npy"), np.load(run / "oof" / h / "test.npy")) for h in [*singles, fusion]
    }
    rows = {}
    for h in [*singles, fusion]:
        s = cfg["heads"][h]["features"][0]
        rows[h] = {
            "set": s,
            **dict(zip(("oof", "test"), scored(run, data, *loaded[h], h))),
            "seconds": round(set_seconds(run, s) + float(res["head_seconds"].get(h) or 0)),
            "peak_rss_gib": set_peak(run, s),
        }
    best = max(singles, key=lambda h: rows[h]["oof"])
    mean = [np.mean([loaded[h][i] for h in singles], 0) for i in (0, 1)]
    rows["fixed mean"] = {
        **dict(zip(("oof", "test"), scored(run, data, *mean, singles[0]))),
        "seconds": sum(rows[h]["seconds"] for h in singles),
    }
    base = [h for h in heads_run(cfg, res) if h not in [*spec.get("table_only", singles), fusion]]
    stack = {}
    for tag, heads in (("without", base), ("with", [*base, fusion])):
        bl = blends(run, args.config, data, heads, f"fz_{tag}", args.seeds, args.reuse)
        stack[tag] = {
            "heads": heads,
            "blends": bl,
            **summary(bl),
            "seconds": round(run_seconds(run, cfg, res, heads, np.mean([b["seconds"] for b in bl]))),
        }
    test_word = "pseudo-test" if res.get("resplit") else "test"
    lines = [
        f"{data.name} ({res['train_rows']} train / {res['test_rows']} {test_word} rows, {res['classes']} classes)"
        + (f", {res['resplit']['kind']} resplit seed {res['resplit']['seed']}" if res.get("resplit") else "")
        + f"; config {cfg['name']}; stacker seeds {args.seeds}; peak RSS of the run {res['peak_rss_gib']} GiB",
        "",
        f"| row | OOF | {test_word} | time | peak RSS |",
        "|---|---|---|---|---|",
    ]
    for h, r in rows.items():
        label = h + (" (the better single view)" if h == best else "")
        peak = f"{r['peak_rss_gib']} GiB" if r.get("peak_rss_gib") else "-"
        lines.append(f"| {label} | {r['oof']:.4f} | {r['test']:.4f} | {r['seconds'] / 60:.1f} min | {peak} |")
    lines += ["", f"| stacker | OOF: mean (sd) | {test_word} by seed | chosen | time |", "|---|---|---|---|---|"]
    for tag, r in stack.items():
        tests = " / ".join(f"{b['test']:.4f}" for b in r["blends"])
        chosen = ", ".join(sorted({b["chosen"] for b in r["blends"]}))
        lines.append(
            f"| {tag} the fusion head | {r['oof_mean']:.4f} ({r['oof_sd'] or 0:.4f}) | {tests} | {chosen} "
            f"| {r['seconds'] / 60:.1f} min |"
        )
    table = "\n".join(lines)
    print(table)
    out = {"run": str(run), "data": str(data), "resplit": res.get("resplit"), "rows": rows, "stacker": stack}
    (run / "bench" / "fusion_table.md").write_text(table + "\n")
    (run / "bench" / "fusion_table.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
