"""The `navec` set: mean navec word vectors (shipped in `natasha`; nltk WordPunctTokenizer) of the
shop title, the title, the dict keys and the dict values."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import DICT_FIELDS

log = logging.getLogger(__name__)


_NAVEC = None


def load_navec():
    global _NAVEC
    if _NAVEC is None:
        import natasha
        from navec import Navec

        path = Path(natasha.__file__).parent / "data" / "emb" / "navec_news_v1_1B_250K_300d_100q.tar"
        _NAVEC = Navec.load(str(path))
    return _NAVEC


def navec(train: pd.DataFrame, test: pd.DataFrame, opts: dict):
    from nltk.tokenize import WordPunctTokenizer

    nv, tok = load_navec(), WordPunctTokenizer()
    both = pd.concat([train, test], ignore_index=True)
    keys = both[[f"{f}_keys" for f in DICT_FIELDS]].apply(lambda r: " ".join(" ".join(v) for v in r), axis=1)
    values = both[[f"{f}_text" for f in DICT_FIELDS]].apply(
        lambda r: " ".join(t.split(": ", 1)[-1] for v in r for t in v.split("; ") if t), axis=1
    )
    fields = {"shop_title": both["shop_title"], "title": both["title"], "dict_keys": keys, "dict_values": values}
    blocks, hits, total = [], 0, 0
    for col in fields.values():
        Z = np.zeros((len(both), nv.pq.dim), np.float32)
        for i, text in enumerate(col.fillna("").str.lower()):
            words = [w for w in tok.tokenize(text) if w.isalpha()]
            vecs = [nv[w] for w in words if w in nv]
            hits, total = hits + len(vecs), total + len(words)
            if vecs:
                Z[i] = np.mean(vecs, axis=0)
        blocks.append(Z)
    log.info("navec: %.1f%% of %d words found in the vocabulary", 100 * hits / max(total, 1), total)
    Z = np.hstack(blocks)
    names = [f"{n}_{i}" for n in fields for i in range(nv.pq.dim)]
    return Z[: len(train)], Z[len(train) :], names
