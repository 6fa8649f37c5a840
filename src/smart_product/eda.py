"""Stage `eda`: a Markdown report and PNG plots about the data, written to reports/eda/.

Reads the data only (never fits anything): class sizes, rare classes, rating and sale, text
lengths and empty-field rates per field, image sizes and broken images, how often identical
titles carry different categories (a floor under a title model's error), and the near-duplicate
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


def twin_majority(keys: pd.Series, y: np.ndarray) -> np.ndarray:
    """keys: a Series indexed by row position (rows without a key dropped). Per row: 1.0 if the
    majority label of the other rows with its key equals its label (ties: the smallest label),
    0.0 if not, NaN when no other row has its key."""
    out = np.full(len(y), np.nan)
    sub = keys[keys.duplicated(keep=False)]
    for pos in sub.groupby(sub).indices.values():
        idx = sub.index.to_numpy()[pos]
        vals, inv = np.unique(y[idx], return_inverse=True)
        counts = np.bincount(inv, minlength=len(vals))
        for j, i in enumerate(idx):
            c = counts.copy()
            c[inv[j]] -= 1
            out[i] = vals[c.argmax()] == y[i]
    return out


def title_twins(train: pd.DataFrame) -> tuple[dict, np.ndarray]:
    """Train rows whose title (dups.normalise: case, punctuation and spacing ignored) other train
    rows share, and how often their twins' majority category (leave one out) is theirs, overall
    and within a shop; and the mask of rows with a twin. Where identical titles disagree, no model
    of the title alone can be right for all of them."""
    from .dups import normalise

    train = train.reset_index(drop=True)  # twin_majority's keys are indexed by row position
    title = train["title"].fillna("").map(normalise)
    title = title.where(title != "")
    y = train[TARGET].to_numpy()
    out = {
        "twin": twin_majority(title.dropna(), y),
        "shop_twin": twin_majority((title + "\x1f" + train["shop_id"].astype(str)).dropna(), y),
    }
    res = {"rows": len(y)}
    for name, ok in out.items():
        has = ~np.isnan(ok)
        res[f"rows_with_a_{name}"] = int(has.sum())
        res[f"{name}_majority_accuracy"] = round(float(ok[has].mean()), 4) if has.any() else None
    return res, ~np.isnan(out["twin"])


def _twin_section(train: pd.DataFrame) -> list[str]:
    t, _ = title_twins(train)
    lines = ["", "## Identical titles, different categories", ""]
    if not t["rows_with_a_twin"]:
        return lines + ["- no two train rows share a title"]
    return lines + [
        f"- {t['rows_with_a_twin']} train rows ({t['rows_with_a_twin'] / t['rows']:.1%}) share their title "
        f"(normalised: case, punctuation, spacing) with another train row; their twins' majority category "
        f"(leave one out) is theirs for **{t['twin_majority_accuracy']:.1%}** of them"
        + (
            f" ({t['shop_twin_majority_accuracy']:.1%} of the {t['rows_with_a_shop_twin']} with a twin from the same "
            f"shop)"
            if t["rows_with_a_shop_twin"]
            else ""
        ),
        "- where identical titles disagree, a model that reads the title alone cannot be right for all of them: "
        "a floor under its error on those rows (`python benchmarks/title_twins.py` compares a run's blend)",
    ]


def _dup_section(cfg: dict, train: pd.DataFrame, test: pd.DataFrame, k: int) -> list[str]:
    """The folds stage's audit: what `folds.group_col: auto` would choose on this data, and why."""
    from .folds import assign_folds, audit_lines, choose_grouping, near_duplicate_audit

    fcfg = cfg.get("folds", {})
    audit, _, _ = near_duplicate_audit(
        cfg, train, test, assign_folds(train[TARGET].to_numpy(), k, int(fcfg.get("seed", 42)))
    )
    if not audit:
        return ["", "## Near-duplicate listings", "", "- off (folds.dups: false)"]
    grouped, why = choose_grouping(audit, float(fcfg.get("auto_margin", 0.05)))
    meta = {
        "policy": "grouped by near-duplicate cluster" if grouped else "plain stratified",
        "group_col": "auto",
        "why": why,
        "dup_audit": audit,
    }
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
    lines = [
        f"# EDA: {cfg['data_dir']}",
        "",
        f"- train: {len(train)} products, {len(counts)} classes; test: {len(test)} products",
        f"- class sizes: max {counts.max()}, median {int(counts.median())}, min {counts.min()}",
        f"- singleton classes: {(counts == 1).sum()} (these rows get no OOF prediction)",
        f"- classes with 2..{k - 1} rows (< K={k}): {((counts > 1) & (counts < k)).sum()}",
        f"- classes with < 10 rows: {(counts < 10).sum()}, holding {counts[counts < 10].sum()} rows",
        f"- shops: {both.shop_id.nunique()} ({train.shop_id.isin(test.shop_id).mean():.1%} of train "
        f"rows from shops also in test)",
        f"- rating missing: {both.rating.isna().mean():.1%}; sale: {both.sale.mean():.1%}",
        "",
    ]

    # text lengths and empty rates per field
    lens = pd.DataFrame({c: both[c].fillna("").str.len() for c in TEXT_COLUMNS})
    lines += ["## Text fields", "", "| field | empty | median chars | p95 chars |", "|---|---|---|---|"]
    for c in TEXT_COLUMNS:
        lines.append(f"| {c} | {(lens[c] == 0).mean():.1%} | {int(lens[c].median())} | {int(lens[c].quantile(0.95))} |")

    # images: status and size
    status = pd.concat([check_images(train).assign(split="train"), check_images(test).assign(split="test")])
    broken = status[status.status != "ok"]
    with ThreadPoolExecutor(8) as pool:
        sizes = np.array(list(pool.map(_image_size, status.loc[status.status == "ok", "image_path"])))
    lines += [
        "",
        "## Images",
        "",
        f"- ok: {(status.status == 'ok').sum()}, missing: {(status.status == 'missing').sum()}, "
        f"corrupt: {(status.status == 'corrupt').sum()} (listed in images_broken.csv)",
    ]
    if len(sizes):
        lines.append(
            f"- width median {int(np.median(sizes[:, 0]))} (min {sizes[:, 0].min()}, max "
            f"{sizes[:, 0].max()}); height median {int(np.median(sizes[:, 1]))}"
        )
    broken[[ID, "split", "status", "image_path"]].to_csv(out / "images_broken.csv", index=False)
    lines += _twin_section(train)
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
