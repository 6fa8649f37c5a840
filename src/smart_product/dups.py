"""Near-duplicate listings over train + test (no labels), for the folds stage and its audit.

Two listings are near-duplicates (an edge) when
- text: their normalised titles are near-identical (cosine of char n-gram TF-IDF >= title_threshold)
  AND, where both have a description, so are their descriptions (>= description_threshold).
  The title finds candidates (sparse top-n product, `sparse_dot_topn`); the description check
  keeps two different products that share a generic title ("New!", a brand name) apart, and the
  title check keeps products that share a boilerplate description ("Wash care: ...") apart;
- image: their photos have perceptual hashes (`imagehash.phash`, 64 bits; a JPEG is decoded at the
  smallest libjpeg scale >= HASH_DRAFT px, as pHash reads a 32 x 32 reduction) at most
  image_hamming bits apart and their titles are at least loosely alike (image_title_threshold;
  uniform studio shots of different products share hashes). A hash shared by more than
  max_hash_rows listings is a placeholder (a blank or "no photo" picture), not a product, and
  gives no edges (logged).
Clusters are the connected components of the edge graph (scipy.sparse.csgraph). Every row gets a
cluster id; a row without near-duplicates is a cluster of its own.

Cached in `folds/dups.parquet` (product_id, split, cluster) + `folds/dups.json` (config, data
fingerprint, counts, timing): the folds stage reruns in seconds when neither changed.

The audit (`audit`) compares how often a row has a near-duplicate on the other side of a split:
p_test, the share of test rows with a near-duplicate (a row of their cluster) in train, against
p_oof, the share of validation rows with one in their training folds, under plain and grouped folds.
"""

from __future__ import annotations

import json
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .config import n_cpus
from .data import ID, fingerprint

log = logging.getLogger(__name__)

DEFAULTS = {
    "title_threshold": 0.8,  # cosine of char 2-4-gram TF-IDF over normalised titles
    "description_threshold": 0.8,  # checked only where both rows have a description
    "candidate_threshold": 0.5,  # word TF-IDF cosine (common words dropped) to be checked at all
    "candidate_max_df": 0.005,  # words in more than this share of rows do not make candidates
    "top_n": 50,  # candidates kept per row (clusters still chain through them)
    "image_hamming": 2,  # max differing bits of the 64-bit pHash; null = no image edges
    "image_title_threshold": 0.7,  # ... and the titles' cosine: white-background shots of two
    # different shoes can share a pHash (fashion: edge purity 0.72
    # without this check, 0.97 with it)
    "max_hash_rows": 20,  # a hash shared by more rows is a placeholder picture
}
_NORM = re.compile(r"[^\w]+")


def normalise(text: str) -> str:
    """Lower case, ё -> е, punctuation -> spaces, whitespace collapsed."""
    return _NORM.sub(" ", str(text).lower().replace("ё", "е")).strip()


def _tfidf(texts: list[str], analyzer: str = "char_wb", ngram_range=(2, 4), max_df=1.0) -> sp.csr_matrix:
    from sklearn.feature_extraction.text import TfidfVectorizer

    extra = {"token_pattern": r"(?u)\b\w+\b"} if analyzer == "word" else {}
    vec = TfidfVectorizer(
        analyzer=analyzer,
        ngram_range=ngram_range,
        sublinear_tf=True,
        min_df=1,
        max_df=max_df,
        dtype=np.float32,
        **extra,
    )
    try:
        return vec.fit_transform(texts).tocsr()
    except ValueError:  # every term pruned (tiny or uniform data): nothing in common to find
        return sp.csr_matrix((len(texts), 1), dtype=np.float32)


def _row_cosine(X: sp.csr_matrix, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    out = np.empty(len(i), np.float32)
    for s in range(0, len(i), 200_000):
        out[s : s + 200_000] = np.asarray(X[i[s : s + 200_000]].multiply(X[j[s : s + 200_000]]).sum(axis=1)).ravel()
    return out


def text_edges(titles: list[str], descriptions: list[str], cfg: dict):
    """Pairs (i < j) of near-duplicate texts, and the title TF-IDF (for the image edges' check).

    1. exact: the same normalised title (and description) -> an edge to the group's first row;
    2. candidates: cosine over word 1-2-gram TF-IDF without the common terms (document frequency
       above max(50, candidate_max_df * rows), which would pair every row with every row), top_n
       per row (`sparse_dot_topn`);
    3. kept when the char 2-4-gram TF-IDF cosine of the titles >= title_threshold and, where both
       rows have one, of the descriptions >= description_threshold."""
    from sparse_dot_topn import sp_matmul_topn

    titles = [normalise(t) for t in titles]
    descs = [normalise(d) for d in descriptions]
    n = len(titles)
    has_title = np.array([bool(t) for t in titles])
    has_desc = np.array([bool(d) for d in descs])
    pairs = []
    # 1. exact duplicates of the text
    codes = pd.factorize(pd.Series([t + "\x00" + d for t, d in zip(titles, descs)]))[0]
    first = np.unique(codes, return_index=True)[1][codes]  # each row's first row with the same text
    dup = (first != np.arange(n)) & has_title
    pairs.append(np.stack([first[dup], np.flatnonzero(dup)], 1))
    # 2. candidates from the rarer words
    rows = np.flatnonzero(has_title)
    if len(rows) > 1:
        max_df = max(50, int(float(cfg["candidate_max_df"]) * n))
        W = _tfidf([titles[r] for r in rows], "word", (1, 2), max_df=max_df)
        S = sp_matmul_topn(
            W,
            W.T,
            top_n=int(cfg["top_n"]),
            threshold=float(cfg["candidate_threshold"]),
            n_threads=n_cpus() if n_cpus() > 1 else None,
        ).tocoo()
        keep = S.row < S.col
        pairs.append(np.stack([rows[S.row[keep]], rows[S.col[keep]]], 1))
    cand = np.unique(np.concatenate(pairs).astype(np.int64), axis=0) if pairs else np.zeros((0, 2), np.int64)
    i, j = np.minimum(cand[:, 0], cand[:, 1]), np.maximum(cand[:, 0], cand[:, 1])
    # 3. verify on the full text
    T = _tfidf(titles)
    ok = _row_cosine(T, i, j) >= float(cfg["title_threshold"]) - 1e-6
    both = has_desc[i] & has_desc[j] & ok
    if both.any():
        D = _tfidf(descs)
        ok[both] = _row_cosine(D, i[both], j[both]) >= float(cfg["description_threshold"]) - 1e-6
    return i[ok], j[ok], T


# pHash reduces a photo to 32 x 32: decoding a JPEG at >= 64 px (draft: 1/8 scale for 512 px) finds
# the same listing pairs as decoding it whole, 3.6x faster (precision 0.834 vs 0.833, recall 0.107
# both, on 5,474 photos of ozon-photos' listings; docs/scale.md)
HASH_DRAFT = 64


def _phash(path: str | None) -> int | None:
    if not path:
        return None
    try:
        import imagehash
        from PIL import Image

        from .images import to_rgb

        with Image.open(path) as im:
            if im.format == "JPEG":
                im.draft("RGB", (HASH_DRAFT, HASH_DRAFT))
            h = imagehash.phash(to_rgb(im))
        return int("".join("1" if b else "0" for b in h.hash.ravel()), 2)
    except Exception:  # noqa: BLE001 - a corrupt image has no hash; counted by the caller
        return None


def image_hashes(paths: list[str | None], workers: int = 8) -> np.ndarray:
    """64-bit pHash per row as uint64; rows without a readable image get 0 and a False mask."""
    from tqdm import tqdm

    with ThreadPoolExecutor(workers) as pool:
        hashes = list(
            tqdm(
                pool.map(_phash, paths, chunksize=64),
                total=len(paths),
                desc="image hashes",
                mininterval=2,
                disable=len(paths) < 2000,
            )
        )
    ok = np.array([h is not None for h in hashes])
    return np.array([h or 0 for h in hashes], dtype=np.uint64), ok


def image_edges(hashes: np.ndarray, ok: np.ndarray, cfg: dict) -> tuple[np.ndarray, np.ndarray, int]:
    """Pairs (i < j) whose hashes differ in at most image_hamming bits.

    Candidates share one of (hamming + 1) bit bands (pigeonhole), then the full distance is
    checked. Returns the pairs and the number of rows whose hash was dropped as a placeholder."""
    max_d = cfg.get("image_hamming")
    if max_d is None or not ok.any():
        return np.zeros(0, np.int64), np.zeros(0, np.int64), 0
    max_d = int(max_d)
    rows = np.flatnonzero(ok)
    h = hashes[rows]
    # placeholders: an exact hash shared by too many rows
    uniq, inv, cnt = np.unique(h, return_inverse=True, return_counts=True)
    placeholder = cnt[inv] > int(cfg["max_hash_rows"])
    rows, h = rows[~placeholder], h[~placeholder]
    n_bands = max_d + 1  # pigeonhole: two hashes <= max_d bits apart agree on one of max_d+1 bands
    bits = 64 // n_bands
    pairs = []
    for b in range(n_bands):
        width = 64 - b * bits if b == n_bands - 1 else bits
        key = (h >> np.uint64(b * bits)) & np.uint64((1 << width) - 1)
        order = np.argsort(key, kind="stable")
        ks = key[order]
        starts = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
        ends = np.r_[starts[1:], len(ks)]
        for s, e in zip(starts[ends - starts > 1], ends[ends - starts > 1]):
            members = order[s:e]
            for c0 in range(0, len(members), 2048):  # bounded memory for a big bucket
                block = members[c0 : c0 + 2048]
                d = np.bitwise_count(h[block][:, None] ^ h[members][None, :])
                a, c = np.nonzero(d <= max_d)
                a, c = rows[block[a]], rows[members[c]]
                keep = a < c
                pairs.append(np.stack([a[keep], c[keep]], 1))
    edges = np.unique(np.concatenate(pairs), axis=0) if pairs else np.zeros((0, 2), np.int64)
    return edges[:, 0].astype(np.int64), edges[:, 1].astype(np.int64), int(placeholder.sum())


def clusters_from_edges(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    from scipy.sparse.csgraph import connected_components

    g = sp.coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(n, n))
    return connected_components(g, directed=False)[1].astype(np.int64)


def find_clusters(train: pd.DataFrame, test: pd.DataFrame, cfg: dict | None = None) -> tuple[pd.DataFrame, dict]:
    """Near-duplicate clusters over train + test: (frame product_id, split, cluster; stats)."""
    cfg = {**DEFAULTS, **(cfg or {})}
    t0 = time.perf_counter()
    both = pd.concat([train.assign(split="train"), test.assign(split="test")], ignore_index=True)
    n = len(both)
    ti, tj, T = text_edges(both["title"].fillna("").tolist(), both["description"].fillna("").tolist(), cfg)
    t_text = time.perf_counter() - t0
    n_img = int(both["has_image"].sum()) if "has_image" in both else 0
    ii = ij = np.zeros(0, np.int64)
    placeholders = 0
    t1 = time.perf_counter()
    if n_img and cfg.get("image_hamming") is not None:
        paths = both["image_path"].where(both["has_image"], None).tolist()
        hashes, ok = image_hashes(paths)
        ii, ij, placeholders = image_edges(hashes, ok, cfg)
        if cfg.get("image_title_threshold") is not None and len(ii):
            keep = _row_cosine(T, ii, ij) >= float(cfg["image_title_threshold"]) - 1e-6
            ii, ij = ii[keep], ij[keep]
        if placeholders:
            log.info(
                "dups: %d rows share a pHash with more than %d others (a placeholder picture): no image edges for them",
                placeholders,
                cfg["max_hash_rows"],
            )
    t_img = time.perf_counter() - t1
    cl = clusters_from_edges(n, np.r_[ti, ii], np.r_[tj, ij])
    sizes = np.bincount(cl)
    frame = pd.DataFrame({ID: both[ID].to_numpy(), "split": both["split"].to_numpy(), "cluster": cl})
    stats = {
        "rows": n,
        "text_edges": int(len(ti)),
        "image_edges": int(len(ii)),
        "placeholder_image_rows": placeholders,
        "rows_in_clusters": int((sizes[cl] > 1).sum()),
        "clusters_2plus": int((sizes > 1).sum()),
        "largest_cluster": int(sizes.max()) if n else 0,
        "seconds_text": round(t_text, 1),
        "seconds_image": round(t_img, 1),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    log.info(
        "dups: %d rows, %d text + %d image edges -> %d rows in %d clusters of 2+ (largest %d) "
        "in %.1f s (text %.1f s, images %.1f s)",
        n,
        stats["text_edges"],
        stats["image_edges"],
        stats["rows_in_clusters"],
        stats["clusters_2plus"],
        stats["largest_cluster"],
        stats["seconds"],
        t_text,
        t_img,
    )
    return frame, stats


# ---------------------------------------------------------------- cache


def dups_config(cfg: dict) -> dict | None:
    """folds.dups from the experiment config merged over DEFAULTS; None when switched off."""
    d = cfg.get("folds", {}).get("dups", {})
    if d is False or (isinstance(d, dict) and d.get("enabled") is False):
        return None
    return {**DEFAULTS, **{k: v for k, v in (d or {}).items() if k != "enabled"}}


def load_or_find(cfg: dict, train: pd.DataFrame, test: pd.DataFrame) -> tuple[pd.DataFrame, dict] | None:
    """The cached clusters of folds/dups.parquet, recomputed when the data or folds.dups changed."""
    dcfg = dups_config(cfg)
    if dcfg is None:
        return None
    out = Path(cfg["out_dir"]) / "folds"
    key = {"data_fingerprint": fingerprint(cfg["data_dir"]), "config": dcfg}
    table, meta_path = out / "dups.parquet", out / "dups.json"
    if table.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == key:
            frame = pd.read_parquet(table)
            ids = np.r_[train[ID].to_numpy(), test[ID].to_numpy()]
            if np.array_equal(frame[ID].to_numpy(), ids):
                log.info("dups: cached %s (%d rows in clusters of 2+)", table, meta["stats"]["rows_in_clusters"])
                return frame, meta["stats"]
    frame, stats = find_clusters(train, test, dcfg)
    out.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(table, index=False)
    meta_path.write_text(json.dumps({"key": key, "stats": stats}, indent=2))
    return frame, stats


def read_clusters(out_dir) -> pd.DataFrame | None:
    """folds/dups.parquet if the folds stage wrote one (reports use it; they never recompute)."""
    path = Path(out_dir) / "folds" / "dups.parquet"
    return pd.read_parquet(path) if path.is_file() else None


# ---------------------------------------------------------------- audit


def has_dup_in_training(cluster: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Per train row: it is validated and its cluster holds a train row of another fold (which is
    then in its training rows; fold -1 rows are in every fold's training rows)."""
    d = pd.DataFrame({"c": cluster, "f": folds})
    total = d.groupby("c")["f"].transform("size").to_numpy()
    same = d.groupby(["c", "f"])["f"].transform("size").to_numpy()
    return (folds >= 0) & (total > same)


def has_dup_in_train(train_cluster: np.ndarray, test_cluster: np.ndarray) -> np.ndarray:
    """Per test row: its cluster holds a train row."""
    return np.isin(test_cluster, train_cluster)


def audit(train_cluster, test_cluster, folds_by_policy: dict[str, np.ndarray]) -> dict:
    """p_test and p_oof per policy (shares of rows with a near-duplicate across the split)."""
    out = {"p_test": float(has_dup_in_train(train_cluster, test_cluster).mean()) if len(test_cluster) else 0.0}
    for name, f in folds_by_policy.items():
        val = f >= 0
        out[f"p_oof_{name}"] = float(has_dup_in_training(train_cluster, f)[val].mean()) if val.any() else 0.0
    return out


def largest_clusters(frame: pd.DataFrame, titles: np.ndarray, top: int = 5, per: int = 3) -> list[dict]:
    """The biggest clusters with a few titles, so a person can judge the thresholds."""
    sizes = frame["cluster"].value_counts()
    out = []
    for c, n in sizes[sizes > 1].head(top).items():
        rows = np.flatnonzero(frame["cluster"].to_numpy() == c)
        split = frame["split"].to_numpy()[rows]
        out.append(
            {
                "cluster": int(c),
                "rows": int(n),
                "train": int((split == "train").sum()),
                "test": int((split == "test").sum()),
                "titles": [str(t)[:90] for t in titles[rows[:per]]],
            }
        )
    return out
