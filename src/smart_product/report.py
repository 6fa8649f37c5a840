"""Stage `report`: the OOF F1 report over the config's heads and its blend (oof/{name}/). Never refits.

Writes oof/report.md, oof/report.json and two plots: oof/heads.png (heads side by side, per
fold) and oof/per_class_f1.png (per-class F1 against class size). Rows that were never validated
(singleton classes, fold -1) have no OOF prediction: they are counted and excluded.

With the folds stage's near-duplicate clusters (folds/dups.parquet) the report also splits each
head's OOF F1 into rows with and without a near-duplicate in their training folds: how much of the
score is recognising a listing seen in training, beside the audit (p_test, p_oof; folds/meta.json).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from . import oof as oof_files
from .config import make_command
from .data import DataError
from .heads import head_names, scores

log = logging.getLogger(__name__)


def _dup_split(cfg: dict, train_ids: np.ndarray, has: np.ndarray, y: np.ndarray, runs: dict):
    """OOF weighted F1 per head on validated rows with / without a near-duplicate in training."""
    from .data import ID
    from .dups import has_dup_in_training, read_clusters
    from .folds import audit_lines

    folds_dir = Path(cfg["out_dir"]) / "folds"
    clusters = read_clusters(cfg["out_dir"])
    if clusters is None or not (folds_dir / "folds.csv").is_file():
        return [], []
    meta = json.loads((folds_dir / "meta.json").read_text()) if (folds_dir / "meta.json").is_file() else {}
    cl = clusters.set_index(ID)["cluster"].reindex(train_ids)
    folds = pd.read_csv(folds_dir / "folds.csv").set_index(ID)["fold"].reindex(train_ids)
    if cl.isna().any() or folds.isna().any():
        log.warning("report: folds/dups.parquet or folds.csv made for other data; no near-duplicate split")
        return [], []
    dup = has_dup_in_training(cl.to_numpy().astype(np.int64), folds.to_numpy().astype(np.int64))[has]
    out, lines = [], ["", "## Near-duplicates (folds/meta.json, folds/dups.parquet)", ""]
    lines += audit_lines(meta) + [
        "",
        f"| head | OOF weighted F1, rows with a near-duplicate in training "
        f"({int(dup.sum())}) | without ({int((~dup).sum())}) |",
        "|---|---|---|",
    ]
    for n, r in runs.items():
        pred = r["oof"][has].argmax(1)
        f_with = scores(y[has][dup], pred[dup])["weighted_f1"] if dup.any() else float("nan")
        f_without = scores(y[has][~dup], pred[~dup])["weighted_f1"] if (~dup).any() else float("nan")
        out.append(
            {
                "name": n,
                "with_dup": None if np.isnan(f_with) else round(f_with, 4),
                "without_dup": None if np.isnan(f_without) else round(f_without, 4),
                "rows_with_dup": int(dup.sum()),
                "rows_without_dup": int((~dup).sum()),
            }
        )
        lines.append(f"| {n} | " + " | ".join("-" if np.isnan(v) else f"{v:.4f}" for v in (f_with, f_without)) + " |")
    return out, lines


def report_names(cfg: dict) -> list[str]:
    """What the report reads: the config's heads (and their pseudo-label rounds), `blend.heads`, the blend."""
    bcfg = cfg.get("blend") or {}
    return list(dict.fromkeys([*head_names(cfg), *(bcfg.get("heads") or []), bcfg.get("name", "blend")]))


def photo_line(train, data_dir, images="auto") -> str:
    """The report's line on photos: how many train rows have one, or that the run is text-only."""
    if images == "off":
        return "- photos: off (IMAGES=off): a text-only run"
    n = int(train["has_image"].sum())
    if n == 0:
        return f"- photos: none under {Path(data_dir) / 'images'}: a text-only run"
    return f"- photos: {n} of {len(train)} train rows ({n / len(train):.0%})"


def make_report(cfg: dict, names: list[str] | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import f1_score

    out = Path(cfg["out_dir"]) / "oof"
    names = oof_files.available(cfg["out_dir"], names or report_names(cfg))
    if not names:
        raise DataError(f"{out}: no OOF predictions of the config's heads (`{make_command(cfg, 'train')}` makes them)")
    from .data import ID, TARGET, label_array, load_split

    train = load_split(cfg["data_dir"], "train", parse_text=False)
    test_ids = load_split(cfg["data_dir"], "test", parse_text=False)[ID].to_numpy()
    data_classes = np.unique(label_array(train[TARGET]))
    runs = {}
    for n in names:  # a folder made for other data is named, with the command that remakes it, and left out
        r = oof_files.load(cfg["out_dir"], n)
        why = oof_files.made_for(r, train[ID].to_numpy(), test_ids, data_classes)
        if why:
            log.warning("%s", oof_files.stale_error(cfg, n, why, r))
            continue
        runs[n] = r
    if not runs:
        raise oof_files.stale_error(cfg, names[0], "no folder of the config's heads matches the data")
    names = list(runs)
    ref = runs[names[0]]
    photos = photo_line(train, cfg["data_dir"], cfg.get("images", "auto"))
    train = train.set_index(ID)
    y_ids = train.loc[ref["train_ids"], TARGET].to_numpy()
    classes = ref["classes"]
    y = np.searchsorted(classes, y_ids)
    has = ~np.isnan(ref["oof"]).any(1)
    never = int((~has).sum())
    counts = np.bincount(y, minlength=len(classes))
    majority = scores(y[has], np.full(has.sum(), counts.argmax()))

    rows, per_class = [], {}
    for n, r in runs.items():
        pred = r["oof"][has].argmax(1)
        s = scores(y[has], pred)
        folds = r["metrics"].get("folds", [])
        rows.append(
            {
                "name": n,
                **{k: round(v, 4) if isinstance(v, float) else v for k, v in s.items()},
                "fold_weighted_f1": [round(f["weighted_f1"], 4) for f in folds],
            }
        )
        labels = np.arange(len(classes))
        per_class[n] = f1_score(y[has], pred, labels=labels, average=None, zero_division=0)
    table = pd.DataFrame(rows).sort_values("weighted_f1", ascending=False)
    best = table.iloc[0]["name"]
    support = np.bincount(y[has], minlength=len(classes))
    worst = pd.DataFrame(
        {"category_id": classes, "train_rows": counts, "validated_rows": support, "f1": per_class[best]}
    )
    worst = worst[worst.validated_rows > 0].sort_values(["f1", "train_rows"]).head(20)

    lines = [
        f"# OOF report: {cfg['data_dir']}",
        "",
        f"- {len(y)} train rows, {len(classes)} classes; **{never} rows never validated** "
        f"(singleton classes, and with grouped folds classes of one group; fold -1): no OOF "
        f"prediction, excluded from every score below",
        photos,
        f"- majority-class baseline on the same rows: weighted F1 {majority['weighted_f1']:.4f}, "
        f"accuracy {majority['accuracy']:.4f}",
        "",
        "| head | weighted F1 | macro F1 | accuracy | rows | weighted F1 per fold |",
        "|---|---|---|---|---|---|",
    ]
    for _, r in table.iterrows():
        lines.append(
            f"| {r['name']} | {r['weighted_f1']:.4f} | {r['macro_f1']:.4f} | {r['accuracy']:.4f} | "
            f"{r['rows']} | {', '.join(f'{v:.4f}' for v in r['fold_weighted_f1'])} |"
        )
    dup_rows, dup_lines = _dup_split(cfg, ref["train_ids"], has, y, runs)
    lines += dup_lines
    lines += [
        "",
        f"## 20 worst classes ({best})",
        "",
        "| category_id | train rows | validated rows | F1 |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r.category_id} | {r.train_rows} | {r.validated_rows} | {r.f1:.3f} |" for r in worst.itertuples()]
    lines += ["", "![heads](heads.png)", "", "![per-class F1](per_class_f1.png)"]

    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(names)), 4))
    x = np.arange(len(table))
    ax.bar(x, table.weighted_f1, color="tab:blue", alpha=0.7, label="overall")
    for i, fw in enumerate(table.fold_weighted_f1):
        ax.scatter([i] * len(fw), fw, color="k", s=10, zorder=3, label="folds" if i == 0 else None)
    ax.axhline(majority["weighted_f1"], color="r", ls="--", label="majority class")
    ax.set_xticks(x, table.name, rotation=30)
    lo = min(table.weighted_f1.min(), min((min(f) for f in table.fold_weighted_f1 if f), default=1)) - 0.05
    ax.set_ylim(max(0, lo), 1)
    ax.set_ylabel("OOF weighted F1")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "heads.png", dpi=90)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for n in table.name[:4]:
        ok = support > 0
        ax.scatter(counts[ok], per_class[n][ok], s=12, alpha=0.6, label=n)
    ax.set_xscale("log")
    ax.set_xlabel("train rows in class (log)")
    ax.set_ylabel("OOF F1 of class")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "per_class_f1.png", dpi=90)
    plt.close(fig)

    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "report.json").write_text(
        json.dumps(
            {
                "never_validated_rows": never,
                "majority": majority,
                "heads": rows,
                "near_duplicates": dup_rows,
                "worst_classes": worst.to_dict("records"),
            },
            indent=2,
            default=str,
        )
    )
    print("\n".join(lines[: 9 + len(table)]))
    return out / "report.md"
