"""Stage `eda`: a Markdown report and PNG plots about the data, written to reports/eda/.

Reads the data only (never fits anything): class sizes, rare classes, rating and sale, text
lengths and empty-field rates per field, image sizes and broken images, and the near-duplicate
audit (the clusters of folds/dups.parquet, found and cached here if the folds stage has not yet).
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from .data import DICT_FIELDS, ID, TARGET, check_images, load_data

log = logging.getLogger(__name__)
TEXT_COLUMNS = ["title", "description", "attributes_text", "shop_title"] + [f"{f}_text" for f in DICT_FIELDS]


def _image_size(path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.size
    except Exception:
        return (0, 0)


def _dup_section(cfg: dict, train: pd.DataFrame, test: pd.DataFrame, k: int) -> list[str]:
    """The folds stage's audit: what `folds.group_col: auto` would choose on this data, and why."""
    from .folds import assign_folds, audit_lines, choose_grouping, near_duplicate_audit

    fcfg = cfg.get("folds", {})
    audit, _, _ = near_duplicate_audit(cfg, train, test, assign_folds(train[TARGET].to_numpy(), k,
                                                                      int(fcfg.get("seed", 42))))
    if not audit:
        return ["", "## Near-duplicate listings", "", "- off (folds.dups: false)"]
    grouped, why = choose_grouping(audit, float(fcfg.get("auto_margin", 0.05)))
    meta = {"policy": "grouped by near-duplicate cluster" if grouped else "plain stratified",
            "group_col": "auto", "why": why, "dup_audit": audit}
    return ["", "## Near-duplicate listings (what `folds.group_col: auto` chooses)", ""] + audit_lines(meta)


def run_eda(cfg: dict) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = time.time()
    out = Path(cfg["out_dir"]) / "reports" / "eda"
    out.mkdir(parents=True, exist_ok=True)
    train, test = load_data(cfg["data_dir"])
    both = pd.concat([train.assign(split="train"), test.assign(split="test")], ignore_index=True)
    k = int(cfg.get("folds", {}).get("k", 5))

    counts = train[TARGET].value_counts()
    lines = [f"# EDA: {cfg['data_dir']}", "",
             f"- train: {len(train)} products, {len(counts)} classes; test: {len(test)} products",
             f"- class sizes: max {counts.max()}, median {int(counts.median())}, min {counts.min()}",
             f"- singleton classes: {(counts == 1).sum()} (these rows get no OOF prediction)",
             f"- classes with 2..{k - 1} rows (< K={k}): {((counts > 1) & (counts < k)).sum()}",
             f"- classes with < 10 rows: {(counts < 10).sum()}, holding {counts[counts < 10].sum()} rows",
             f"- shops: {both.shop_id.nunique()} ({train.shop_id.isin(test.shop_id).mean():.1%} of train "
             f"rows from shops also in test)",
             f"- rating missing: {both.rating.isna().mean():.1%}; sale: {both.sale.mean():.1%}", ""]

    # text lengths and empty rates per field
    lens = pd.DataFrame({c: both[c].fillna("").str.len() for c in TEXT_COLUMNS})
    lines += ["## Text fields", "", "| field | empty | median chars | p95 chars |", "|---|---|---|---|"]
    for c in TEXT_COLUMNS:
        lines.append(f"| {c} | {(lens[c] == 0).mean():.1%} | {int(lens[c].median())} | "
                     f"{int(lens[c].quantile(0.95))} |")

    # images: status and size
    status = pd.concat([check_images(train).assign(split="train"), check_images(test).assign(split="test")])
    broken = status[status.status != "ok"]
    with ThreadPoolExecutor(8) as pool:
        sizes = np.array(list(pool.map(_image_size, status.loc[status.status == "ok", "image_path"])))
    lines += ["", "## Images", "",
              f"- ok: {(status.status == 'ok').sum()}, missing: {(status.status == 'missing').sum()}, "
              f"corrupt: {(status.status == 'corrupt').sum()} (listed in images_broken.csv)"]
    if len(sizes):
        lines.append(f"- width median {int(np.median(sizes[:, 0]))} (min {sizes[:, 0].min()}, max "
                     f"{sizes[:, 0].max()}); height median {int(np.median(sizes[:, 1]))}")
    broken[[ID, "split", "status", "image_path"]].to_csv(out / "images_broken.csv", index=False)
    lines += _dup_section(cfg, train, test, k)
    lines += ["", "## Largest and rarest classes", "", "| category_id | rows |", "|---|---|"]
    lines += [f"| {c} | {n} |" for c, n in pd.concat([counts.head(5), counts.tail(5)]).items()]

    # plots
    fig, ax = plt.subplots(2, 3, figsize=(15, 8))
    ax[0, 0].bar(np.arange(len(counts)), counts.to_numpy())
    ax[0, 0].set_yscale("log")
    ax[0, 0].set_title("class size by rank (log)")
    ax[0, 0].axhline(k, color="r", ls="--", label=f"K={k}")
    ax[0, 0].legend()
    ax[0, 1].hist(np.minimum(counts.to_numpy(), 20), bins=np.arange(1, 22) - 0.5)
    ax[0, 1].set_title("rare classes: rows per class (capped at 20)")
    ax[0, 2].hist(both.rating.dropna(), bins=30)
    ax[0, 2].set_title(f"rating ({both.rating.isna().mean():.0%} missing); sale {both.sale.mean():.0%}")
    ax[1, 0].boxplot([np.log1p(lens[c]) for c in TEXT_COLUMNS], tick_labels=TEXT_COLUMNS)
    ax[1, 0].set_title("log(1 + chars) per field")
    ax[1, 0].tick_params(axis="x", rotation=60)
    ax[1, 1].bar(TEXT_COLUMNS, [(lens[c] == 0).mean() for c in TEXT_COLUMNS])
    ax[1, 1].set_title("empty-field rate")
    ax[1, 1].tick_params(axis="x", rotation=60)
    if len(sizes):
        ax[1, 2].scatter(sizes[:, 0], sizes[:, 1], s=3, alpha=0.3)
    ax[1, 2].set_title(f"image width x height; {len(broken)} missing/corrupt")
    fig.tight_layout()
    fig.savefig(out / "eda.png", dpi=90)
    plt.close(fig)
    lines += ["", "![eda](eda.png)", "", f"_made in {time.time() - t0:.1f}s_"]
    (out / "eda.md").write_text("\n".join(lines) + "\n")
    log.info("eda: report %s (%d broken images)", out / "eda.md", len(broken))
    return out / "eda.md"
