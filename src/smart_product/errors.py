"""Stage `errors`: where the model errs, read from the OOF files (refits nothing). The one owner of oof/errors/.

For the blend's OOF probabilities (default) or one head's (`make errors HEAD=name`), on the rows that
were validated (fold -1 rows have no OOF prediction):

    oof/errors/errors.md         the report: the confused class pairs, the contact sheets, the classes,
                                 the label-noise suspects (top rows)
               errors.json       its figures, whole: every class, the ranked pairs, suspects per class
               pair_{rank}.png   a contact sheet per confused pair: up to `per_side` misclassified products
                                 each way (photo or a "no photo" tile, title, shop, true and predicted
                                 class, the predicted class's probability); the most confident errors first
               suspects.parquet  every label-noise suspect, with its evidence

Confused pairs are ranked by the weighted F1 they cost: the rise in OOF weighted F1 if the pair's
errors (both ways) were right, from the confusion matrix in closed form (`pair_costs`).

Label-noise suspects are rows whose given label the OOF probabilities find unlikely: confident
learning (`cleanlab.filter.find_label_issues`, prune by noise rate, ranked by self-confidence) over
the OOF matrix, restricted to the classes with validated rows. Beside each: its near-duplicate
cluster's labels (folds/dups.parquet) and its title twins (same normalised title) with their labels.
A report only: nothing is dropped or relabelled (training on a cleaned set would need nested folds
to keep the fold rule).
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from . import oof as oof_files
from .config import make_command
from .data import ID, TARGET, DataError, load_split

log = logging.getLogger(__name__)

DEFAULTS = {
    "after_blend": True,  # the blend stage (make blend / make all) writes the report after the submission
    "pairs": 20,  # confused pairs ranked, each with a contact sheet
    "per_side": 4,  # misclassified products shown each way on a sheet
    "top_suspects": 50,  # suspects listed in errors.md (all of them go to suspects.parquet)
    "thumb": 160,  # px of a sheet's photo tiles
}


def settings(cfg: dict) -> dict:
    return {**DEFAULTS, **(cfg.get("errors") or {})}


def folder(out_dir) -> Path:
    return Path(out_dir) / "oof" / "errors"


# ---------------------------------------------------------------- figures from the confusion matrix


def confusion(y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """cm[true, predicted] counts."""
    return np.bincount(y * n_classes + pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def per_class(cm: np.ndarray) -> pd.DataFrame:
    """Per class (row of cm): support, precision, recall, F1, the weighted F1 its errors cost
    (support share x (1 - F1)), and the class it is most often mistaken for (with the count)."""
    tp = np.diag(cm).astype(float)
    support, predicted = cm.sum(1), cm.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(support + predicted > 0, 2 * tp / (support + predicted), 0.0)
    off = cm.copy()
    np.fill_diagonal(off, 0)
    return pd.DataFrame(
        {
            "support": support,
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "f1_lost": support / max(support.sum(), 1) * (1 - f1),
            "mistaken_for": off.argmax(1),
            "mistaken_rows": off.max(1),
        }
    )


def pair_costs(cm: np.ndarray) -> pd.DataFrame:
    """Every unordered pair of classes confused at least once: a, b, rows a -> b, rows b -> a, and
    `f1_cost`, the rise in weighted F1 (sklearn's: classes weighted by support) if those rows were
    predicted right. Sorted by cost, largest first."""
    n = cm.sum()
    tp = np.diag(cm).astype(float)
    support, predicted = cm.sum(1).astype(float), cm.sum(0).astype(float)
    off = cm.copy()
    np.fill_diagonal(off, 0)
    a, b = np.nonzero(np.triu(off + off.T, 1))
    ab, ba = off[a, b].astype(float), off[b, a].astype(float)

    def f1(t, s, p):  # 2 tp / (support + predicted)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(s + p > 0, 2 * t / (s + p), 0.0)

    # fixing a -> b: a gains a true positive (its support stays), b loses a false positive; and back
    gain_a = f1(tp[a] + ab, support[a], predicted[a] + ab - ba) - f1(tp[a], support[a], predicted[a])
    gain_b = f1(tp[b] + ba, support[b], predicted[b] + ba - ab) - f1(tp[b], support[b], predicted[b])
    cost = (support[a] * gain_a + support[b] * gain_b) / max(n, 1)
    out = pd.DataFrame({"a": a, "b": b, "a_as_b": ab.astype(int), "b_as_a": ba.astype(int), "f1_cost": cost})
    return out.sort_values(["f1_cost", "a_as_b"], ascending=False, kind="stable").reset_index(drop=True)


# ---------------------------------------------------------------- label-noise suspects


def label_suspects(y: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, dict]:
    """Positions (into y) of rows whose label the probabilities find unlikely, most unlikely first:
    cleanlab's confident learning over the classes present in y (the others' columns dropped and the
    rows renormalised: cleanlab counts per class of the labels). Returns (positions, info)."""
    from cleanlab.filter import find_label_issues

    present, yy = np.unique(y, return_inverse=True)
    P = np.asarray(probs[:, present], dtype=np.float32)  # float64 would double cleanlab's copies (ozon: +0.5 GB)
    P /= np.clip(P.sum(1, keepdims=True), 1e-12, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        idx = find_label_issues(
            yy, P, filter_by="prune_by_noise_rate", return_indices_ranked_by="self_confidence", n_jobs=1
        )
    few = sum("too few examples" in str(w.message) for w in caught)
    return np.asarray(idx, dtype=np.int64), {"classes": int(len(present)), "classes_too_few_rows": int(few)}


def _label_counts(keys: pd.Series, labels: np.ndarray, wanted) -> dict:
    """{key: {label: rows}} for the keys in `wanted` only."""
    d = pd.DataFrame({"k": keys.to_numpy(), "y": labels})
    d = d[d.k.isin(set(wanted))]
    out: dict = {}
    for (k, lab), n in d.groupby(["k", "y"]).size().items():
        out.setdefault(k, {})[lab] = int(n)
    return out


def _evidence(counts: dict | None, given, own: int = 1) -> tuple[int, int, object, int]:
    """(other rows, of them with the given label, the most common other label, its rows) of a group's
    label counts, this row left out."""
    counts = dict(counts or {})
    counts[given] = counts.get(given, 0) - own
    rows = sum(counts.values())
    others = {k: v for k, v in counts.items() if k != given and v > 0}
    top = max(others, key=others.get) if others else None
    return rows, counts.get(given, 0), top, (others[top] if top is not None else 0)


# ---------------------------------------------------------------- contact sheets


def _thumb(path, size: int):
    from PIL import Image

    if not isinstance(path, str) or not path:  # None, or NaN in a string column
        return None
    try:
        with Image.open(path) as im:
            im.draft("RGB", (size, size))
            im = im.convert("RGB")
            im.thumbnail((size, size))
            return np.asarray(im)
    except (OSError, ValueError):
        return None


def _cut(text, n: int) -> str:
    text = str(text or "").replace("\n", " ").replace("$", r"\$")
    return text if len(text) <= n else text[: n - 1] + "…"


def _wrap(text, width: int, lines: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(_cut(text, width * lines), width)[:lines])


def contact_sheet(path: Path, title: str, sides: list[tuple[str, pd.DataFrame]], per_side: int, thumb: int) -> int:
    """One PNG: a row of up to `per_side` products per side (a frame with image_path, title, shop_title,
    true, pred, p_pred, p_true): photo tiles, or text cards (the title at length) where no product of
    the sheet has a readable photo. Returns the number of products without one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    imgs = [[_thumb(p, thumb) for p in rows.image_path] for _, rows in sides]
    no_photo = sum(i is None for side in imgs for i in side)
    photos = no_photo < sum(len(side) for side in imgs)
    fig = plt.figure(figsize=(2.6 * per_side, (3.7 if photos else 2.0) * len(sides) + 0.4), layout="constrained")
    subs = fig.subfigures(len(sides), 1, squeeze=False)[:, 0]
    for sub, (label, rows), side in zip(subs, sides, imgs):
        sub.suptitle(_cut(label, 140), fontsize=9, x=0.01, ha="left", fontweight="bold")
        axes = sub.subplots(1, per_side, squeeze=False)[0]
        for c, ax in enumerate(axes):
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(rows):
                ax.set_frame_on(False)
                continue
            row, img = rows.iloc[c], side[c]
            facts = (
                f"shop: {_cut(row.shop_title, 24)}\ntrue: {_cut(row.true, 28)}\n"
                f"pred: {_cut(row.pred, 28)}\np(pred) {row.p_pred:.2f}  p(true) {row.p_true:.2f}"
            )
            if not photos:  # a text card: the title is what the model read
                ax.text(0.04, 0.95, _wrap(row.title, 30, 5), va="top", fontsize=8, transform=ax.transAxes)
                ax.set_xlabel(facts, fontsize=7, loc="left")
                continue
            if img is None:
                ax.imshow(np.full((thumb, thumb, 3), 235, np.uint8))
                ax.text(thumb / 2, thumb / 2, "no photo", ha="center", va="center", color="0.4", fontsize=10)
            else:
                ax.imshow(img)
            ax.set_title(_cut(row.title, 30), fontsize=8)
            ax.set_xlabel(facts, fontsize=7, loc="left")
    fig.suptitle(_cut(title, 160), fontsize=10)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return no_photo


# ---------------------------------------------------------------- the stage


def _load(cfg: dict, head: str | None) -> tuple[str, dict]:
    name = head or (cfg.get("blend") or {}).get("name", "blend")
    if oof_files.read_metrics(cfg["out_dir"], name) is None:
        there = oof_files.available(cfg["out_dir"])
        target = "train" if head else "blend"
        raise DataError(
            f"{oof_files.folder(cfg['out_dir'], name)}: no finished OOF predictions (`{make_command(cfg, target)}` "
            f"makes them; finished here: {', '.join(there) or 'none'})"
        )
    return name, oof_files.load(cfg["out_dir"], name)


def make_errors(cfg: dict, head: str | None = None) -> Path:
    """Write oof/errors/ for the blend (or `head`); returns errors.md's path."""
    from .dups import normalise, read_clusters

    t0 = time.time()
    opts = settings(cfg)
    name, run = _load(cfg, head)
    train = load_split(cfg["data_dir"], "train")
    test_ids = load_split(cfg["data_dir"], "test", parse_text=False)[ID].to_numpy()
    why = oof_files.made_for(run, train[ID].to_numpy(), test_ids)
    if why:
        raise oof_files.stale_error(cfg, name, why, run)
    train = train.set_index(ID).loc[run["train_ids"]].reset_index()
    classes = run["classes"]
    y_all = np.searchsorted(classes, train[TARGET].to_numpy())
    if not np.array_equal(classes[np.clip(y_all, 0, len(classes) - 1)], train[TARGET].to_numpy()):
        raise oof_files.stale_error(cfg, name, "a train label is not among its classes", run)
    has = ~np.isnan(run["oof"]).any(1)
    rows = np.flatnonzero(has)
    P = np.asarray(run["oof"][rows], dtype=np.float32)
    y = y_all[rows]
    pred = P.argmax(1)
    C = len(classes)
    names = (
        train.drop_duplicates(TARGET).set_index(TARGET)["category_name"].astype(str).to_dict()
        if "category_name" in train.columns
        else {}
    )

    def label(k: int) -> str:
        cid = classes[int(k)]
        return f"{cid} {names[cid]}" if cid in names else str(cid)

    out = folder(cfg["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("pair_*.png"):  # sheets of an earlier run with more pairs
        old.unlink()

    cm = confusion(y, pred, C)
    pc = per_class(cm)
    pc.insert(0, "category_id", classes)
    pc["name"] = [label(k) for k in range(C)]
    pc["mistaken_for"] = [label(k) if n else "" for k, n in zip(pc.mistaken_for, pc.mistaken_rows)]
    pc = pc[pc.support > 0].sort_values("f1_lost", ascending=False)
    pairs = pair_costs(cm).head(int(opts["pairs"]))
    acc = float((pred == y).mean()) if len(y) else float("nan")
    from .heads import scores

    f1 = scores(y, pred)["weighted_f1"]

    frame = pd.DataFrame(
        {
            "image_path": train["image_path"].to_numpy()[rows],
            "title": train["title"].to_numpy()[rows] if "title" in train else "",
            "shop_title": train["shop_title"].to_numpy()[rows],
            "y": y,
            "pred": pred,
            "p_pred": P[np.arange(len(y)), pred],
            "p_true": P[np.arange(len(y)), y],
        }
    )
    sheets, no_photo = [], 0
    from tqdm.auto import tqdm

    for i, p in enumerate(tqdm(list(pairs.itertuples()), desc="errors: contact sheets", leave=False), start=1):
        sides = []
        for t, q in ((p.a, p.b), (p.b, p.a)):
            wrong = frame[(frame.y == t) & (frame.pred == q)].sort_values("p_pred", ascending=False)
            wrong = wrong.head(int(opts["per_side"])).assign(true=label(t), pred=label(q))
            shown = f", the {len(wrong)} most confident" if cm[t, q] > len(wrong) else ""
            sides.append((f"true {label(t)}  ->  predicted {label(q)}: {int(cm[t, q])} rows{shown}", wrong))
        path = out / f"pair_{i:02d}.png"
        no_photo += contact_sheet(
            path,
            f"#{i}: {label(p.a)} <-> {label(p.b)}: {p.a_as_b} + {p.b_as_a} rows, weighted F1 cost {p.f1_cost:.4f}",
            sides,
            int(opts["per_side"]),
            int(opts["thumb"]),
        )
        sheets.append(path.name)

    # label-noise suspects, with their near-duplicate cluster's and title twins' labels
    t1 = time.time()
    found, sus_info = label_suspects(y, P) if len(y) else (np.zeros(0, np.int64), {})
    at = rows[found]
    given = train[TARGET].to_numpy()
    sus = pd.DataFrame(
        {
            "rank": np.arange(1, len(found) + 1),
            ID: train[ID].to_numpy()[at],
            "title": frame["title"].to_numpy()[found],
            "shop_title": frame["shop_title"].to_numpy()[found],
            "given": given[at],
            "given_name": [names.get(c, "") for c in given[at]],
            "p_given": frame["p_true"].to_numpy()[found],
            "suggested": classes[pred[found]],
            "suggested_name": [names.get(c, "") for c in classes[pred[found]]],
            "p_suggested": frame["p_pred"].to_numpy()[found],
        }
    )
    clusters = read_clusters(cfg["out_dir"])
    if clusters is not None:
        cl = clusters.set_index(ID)["cluster"].reindex(train[ID])
        if cl.isna().any():
            log.warning("errors: folds/dups.parquet was made for other data; suspects shown without clusters")
            clusters = None
    ev = {}
    if clusters is not None:
        counts = _label_counts(cl.reset_index(drop=True), given, cl.to_numpy()[at])
        ev["cluster"] = [_evidence(counts.get(k), g) for k, g in zip(cl.to_numpy()[at], given[at])]
    norm = train["title"].fillna("").astype(str).map(normalise) if "title" in train else None
    if norm is not None:
        keys = norm.to_numpy()[at]
        counts = _label_counts(norm.reset_index(drop=True), given, [k for k in keys if k])
        ev["twin"] = [_evidence(counts.get(k), g) if k else (0, 0, None, 0) for k, g in zip(keys, given[at])]
    for kind, vals in ev.items():
        v = list(zip(*vals)) if vals else [[], [], [], []]
        sus[f"{kind}_rows"] = np.asarray(v[0], dtype=np.int64)
        sus[f"{kind}_given"] = np.asarray(v[1], dtype=np.int64)
        sus[f"{kind}_other_label"] = pd.array(list(v[2]), dtype=object)
        sus[f"{kind}_other_rows"] = np.asarray(v[3], dtype=np.int64)
    sus.to_parquet(out / "suspects.parquet", index=False)
    t_sus = time.time() - t1
    per_cls = (
        pd.DataFrame({"category_id": given[at]}).value_counts().rename("suspects").reset_index()
        if len(at)
        else pd.DataFrame(columns=["category_id", "suspects"])
    )
    support = pd.Series(np.bincount(y, minlength=C), index=classes)
    per_cls["validated_rows"] = support.reindex(per_cls.category_id).to_numpy()
    per_cls["share"] = per_cls.suspects / per_cls.validated_rows
    per_cls["name"] = [names.get(c, "") for c in per_cls.category_id]

    # errors.md and errors.json
    lines = [
        f"# Where the model errs: {name} OOF on {cfg['data_dir']}",
        "",
        f"- {len(y)} validated rows of {len(y_all)} ({len(y_all) - len(y)} never validated: no OOF prediction), "
        f"{int((pc.support > 0).sum())} classes; OOF weighted F1 {f1:.4f}, accuracy {acc:.4f}, "
        f"{int((pred != y).sum())} rows wrong",
        f"- read from {oof_files.folder(cfg['out_dir'], name)} (refits nothing); `make errors HEAD=name` for one head",
        "",
        f"## The {len(pairs)} most costly confused pairs",
        "",
        "The cost: how much OOF weighted F1 would rise if the pair's errors, both ways, were right.",
        "",
        "| # | class a | class b | a as b | b as a | weighted F1 cost | sheet |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {i} | {label(p.a)} | {label(p.b)} | {p.a_as_b} | {p.b_as_a} | {p.f1_cost:.4f} | [{s}]({s}) |"
        for i, (p, s) in enumerate(zip(pairs.itertuples(), sheets), start=1)
    ]
    if sheets:
        lines += ["", f"![the most costly pair]({sheets[0]})"]
    lines += [
        "",
        "## Classes by the weighted F1 they lose (worst 20)",
        "",
        "| class | support | precision | recall | F1 | F1 lost | most often mistaken for (rows) |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.name} | {r.support} | {r.precision:.3f} | {r.recall:.3f} | {r.f1:.3f} | {r.f1_lost:.4f} | "
        f"{f'{r.mistaken_for} ({r.mistaken_rows})' if r.mistaken_rows else '-'} |"
        for r in pc.head(20).itertuples()
    ]
    lines += [
        "",
        f"## Label-noise suspects: {len(sus)} rows ({len(sus) / max(len(y), 1):.1%} of validated rows)",
        "",
        "Rows whose given label the OOF probabilities find unlikely (confident learning, cleanlab's "
        "`find_label_issues` over the classes with validated rows, ranked by the given label's probability). "
        "Evidence: the row's near-duplicate cluster (folds/dups.parquet) and its title twins (the same "
        "normalised title): other rows, how many carry the given label, the most common other label. "
        "A report only: nothing is dropped or relabelled. All of them: suspects.parquet.",
        "",
        *[
            f"- {int((sus[f'{k}_other_rows'] > 0).sum())} of them have a {what} with another label "
            f"({int((sus[f'{k}_rows'] > 0).sum())} have one at all)"
            for k, what in (("cluster", "near-duplicate"), ("twin", "title twin"))
            if f"{k}_rows" in sus
        ],
        "",
        "| class | suspects | of validated rows | share |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {label(int(np.searchsorted(classes, r.category_id)))} | {r.suspects} | {r.validated_rows} | {r.share:.1%} |"
        for r in per_cls.head(15).itertuples()
    ]
    cols = ["#", "product_id", "title", "shop", "given (p)", "suggested (p)"]
    cols += [f"{'cluster' if k == 'cluster' else 'title twins'}: rows, given, top other" for k in ev]
    lines += ["", f"Top {int(opts['top_suspects'])}:", "", "| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    for r in sus.head(int(opts["top_suspects"])).itertuples():
        cells = [
            str(r.rank),
            str(getattr(r, ID)),
            _cut(r.title, 50).replace("|", "/"),
            _cut(r.shop_title, 20).replace("|", "/"),
            f"{_cut(label(int(np.searchsorted(classes, r.given))), 36)} ({r.p_given:.2f})",
            f"{_cut(label(int(np.searchsorted(classes, r.suggested))), 36)} ({r.p_suggested:.2f})",
        ]
        for kind in ev:
            rows_k, g, other, n_other = (
                getattr(r, f"{kind}_{s}") for s in ("rows", "given", "other_label", "other_rows")
            )
            cells.append(f"{rows_k}, {g}" + (f", {other} x{n_other}" if n_other else "") if rows_k else "-")
        lines.append("| " + " | ".join(cells) + " |")
    took = time.time() - t0
    lines += [
        "",
        f"Made in {took:.1f} s (suspects {t_sus:.1f} s); {no_photo} products on the sheets without a readable photo.",
    ]
    (out / "errors.md").write_text("\n".join(lines) + "\n")
    (out / "errors.json").write_text(
        json.dumps(
            {
                "source": name,
                "validated_rows": int(len(y)),
                "weighted_f1": f1,
                "accuracy": acc,
                "pairs": [
                    {
                        **{k: (int(v) if k != "f1_cost" else float(v)) for k, v in p._asdict().items() if k != "Index"},
                        "a_id": classes[p.a],
                        "b_id": classes[p.b],
                        "a_name": label(p.a),
                        "b_name": label(p.b),
                        "sheet": s,
                    }
                    for p, s in zip(pairs.itertuples(), sheets)
                ],
                "classes": pc.to_dict("records"),
                "suspects": {
                    "rows": int(len(sus)),
                    "share": len(sus) / max(len(y), 1),
                    **sus_info,
                    "per_class": per_cls.to_dict("records"),
                },
                "no_photo_tiles": no_photo,
                "seconds": round(took, 1),
            },
            indent=2,
            default=lambda o: o.item() if hasattr(o, "item") else str(o),
        )
    )
    top = pairs.iloc[0] if len(pairs) else None
    print(
        f"errors: {out / 'errors.md'} ("
        + (
            f"top pair {label(top.a)} <-> {label(top.b)}, weighted F1 cost {top.f1_cost:.4f}; "
            if top is not None
            else ""
        )
        + f"{len(sus)} label-noise suspects, {len(sus) / max(len(y), 1):.1%}; {took:.1f} s)"
    )
    return out / "errors.md"
