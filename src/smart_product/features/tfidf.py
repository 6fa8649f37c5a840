"""Text views (what a text set or a TF-IDF field reads) and the TF-IDF sets: `tfidf_sparse` (the
sparse matrix, for linear heads) and `tfidf` (reduced by TruncatedSVD). Fit on train + test text:
no labels are used, so this is leak-free (transductive)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from ..data import DICT_FIELDS, DataError

log = logging.getLogger(__name__)


def _joined(frame: pd.DataFrame, columns: list[str]) -> pd.Series:
    out = frame[columns[0]].fillna("")
    for c in columns[1:]:
        out = out + " | " + frame[c].fillna("")
    return out


DICT_TEXT = ["attributes_text"] + [f"{f}_text" for f in DICT_FIELDS]


def text_view(frame: pd.DataFrame, view: str) -> list[str]:
    if view == "title":
        return frame["title"].fillna("").tolist()
    if view == "all":
        return _joined(frame, ["title", "description", *DICT_TEXT]).tolist()
    raise ValueError(f"unknown text view {view!r} (all, title)")



# the default: one word + one char vectorizer over all text (the joint view)
ALL_TEXT = {"all": {"word": [1, 2], "char": [2, 5]}}
TFIDF_FIELDS = ("all", "title", "description", "dicts", "shop_title")


def field_text(frame: pd.DataFrame, field: str) -> list[str]:
    """The text one TF-IDF field reads: all (title, description, attributes, dicts, shop title),
    title, description, dicts (attributes + the three characteristic dicts) or shop_title."""
    if field == "all":
        return [t + " | " + s for t, s in zip(text_view(frame, "all"), frame["shop_title"].fillna(""))]
    if field == "dicts":
        return _joined(frame, DICT_TEXT).tolist()
    if field in ("title", "description", "shop_title"):
        return frame[field].fillna("").tolist()
    raise DataError(f"config features: unknown TF-IDF field {field!r} (one of {TFIDF_FIELDS})")


def _stemmed(texts: list[str], language: str) -> list[str]:
    """Each text as its lower-cased word tokens (TfidfVectorizer's token pattern) replaced by their
    Snowball stems (nltk; cached per distinct word), joined by spaces."""
    import re

    from nltk.stem.snowball import SnowballStemmer

    if language not in SnowballStemmer.languages:
        raise DataError(
            f"config features: stem {language!r} is not a Snowball language "
            f"(one of {', '.join(SnowballStemmer.languages)})"
        )
    stem, cache, token = SnowballStemmer(language).stem, {}, re.compile(r"(?u)\b\w\w+\b")
    return [
        " ".join(cache[w] if w in cache else cache.setdefault(w, stem(w)) for w in token.findall(text.lower()))
        for text in texts
    ]


def tfidf_matrix(train: pd.DataFrame, test: pd.DataFrame, opts: dict):
    """TF-IDF blocks side by side, fit on train + test text (no labels).

    `fields` (default ALL_TEXT) maps a field (see field_text) to its vectorizers: `word: [1, 2]`
    (word n-gram range), `char: [2, 5]` (char_wb n-gram range), optional `weight` (scales the
    field's block), `max_features`, `min_df` and `stem` (a Snowball language, e.g. `russian`: the
    word n-grams are read over word stems, so "футболки" and "футболка" are one feature).
    Separate fields let a linear head weigh a title word apart from the same word in a long
    description: on fashion (long care-label HTML) title/dicts/description fields beat the joint
    view by ~0.006 weighted F1; on flipkart the joint view wins.
    """
    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import TfidfVectorizer

    fields = opts.get("fields") or ALL_TEXT
    if not isinstance(fields, dict) or not all(isinstance(v, dict) or v is None for v in fields.values()):
        raise DataError(
            f"config features.sets.{opts.get('name')}.fields: a mapping field -> "
            f"{{word: [1, 2], char: [2, 5], weight: 1.0}}, not {fields!r}"
        )
    both = pd.concat([train, test], ignore_index=True)
    blocks = []
    for field, spec in fields.items():
        texts = field_text(both, field)
        spec = spec or {}
        unknown = set(spec) - {"word", "char", "weight", "max_features", "min_df", "stem"}
        if unknown or not ({"word", "char"} & set(spec)):
            raise DataError(
                f"config features.sets.{opts.get('name')}.fields.{field}: needs word and/or char "
                f"n-gram ranges (unknown keys: {sorted(unknown)})"
            )
        # min_df: one value, or [word, char]
        min_df = spec.get("min_df", 2)
        min_df = min_df if isinstance(min_df, list) else [min_df, min_df]
        if len(min_df) != 2:
            raise DataError(
                f"config features.sets.{opts.get('name')}.fields.{field}.min_df: one number or "
                f"[word, char], not {spec['min_df']!r}"
            )
        min_df = dict(zip(("word", "char_wb"), min_df))
        common = dict(
            sublinear_tf=True,
            dtype=np.float32,
            max_features=int(spec.get("max_features", opts.get("max_features", 200_000))),
        )
        for analyzer, rng in (("word", spec.get("word")), ("char_wb", spec.get("char"))):
            if not rng:
                continue
            vec = TfidfVectorizer(analyzer=analyzer, ngram_range=tuple(rng), min_df=int(min_df[analyzer]), **common)
            words = _stemmed(texts, spec["stem"]) if analyzer == "word" and spec.get("stem") else texts
            try:
                M = vec.fit_transform(words)
            except ValueError:  # empty vocabulary: the field is empty everywhere
                log.warning("features/%s: field %s has no %s n-grams; skipped", opts.get("name"), field, analyzer)
                continue
            blocks.append(M * float(spec.get("weight", 1.0)))
    if not blocks:
        raise DataError(f"features/{opts.get('name')}: no TF-IDF field has any text")
    return hstack(blocks).tocsr().astype(np.float32)


def tfidf_sparse(train: pd.DataFrame, test: pd.DataFrame, opts: dict):
    M = tfidf_matrix(train, test, opts)
    return M[: len(train)], M[len(train) :], [f"tfidf{i}" for i in range(M.shape[1])]


def tfidf(train: pd.DataFrame, test: pd.DataFrame, opts: dict):
    from sklearn.decomposition import TruncatedSVD

    M = tfidf_matrix(train, test, opts)
    dim = min(int(opts.get("svd_dim", 256)), M.shape[1] - 1)
    Z = TruncatedSVD(dim, random_state=int(opts.get("seed", 0))).fit_transform(M).astype(np.float32)
    return Z[: len(train)], Z[len(train) :], [f"svd{i}" for i in range(dim)]
