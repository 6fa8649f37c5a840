"""Shared fixtures: the demo data set is generated once per pytest run into a temp dir."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from smart_product.config import load_config
from smart_product.demo import make_demo_data

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    return make_demo_data(tmp_path_factory.mktemp("demo"), seed=0, test_frac=0.25)  # smaller test split: faster tests


@pytest.fixture
def make_cfg(tmp_path):
    """Config for a data dir, writing its outputs into this test's tmp dir."""

    def _make(data_dir, *overrides):
        return load_config(None, [f"out_dir={tmp_path / 'work'}", *overrides], str(data_dir))

    return _make


@pytest.fixture
def copy_data(tmp_path, demo_dir):
    """Copy the demo split files (not images: they are linked) so a test can break them."""

    def _copy(train: pd.DataFrame | None = None, test: pd.DataFrame | None = None) -> Path:
        out = tmp_path / "data"
        out.mkdir(exist_ok=True)
        (train if train is not None else pd.read_parquet(demo_dir / "train.parquet")).to_parquet(out / "train.parquet")
        (test if test is not None else pd.read_parquet(demo_dir / "test.parquet")).to_parquet(out / "test.parquet")
        if not (out / "images").exists():
            (out / "images").symlink_to(demo_dir / "images")
        return out

    return _copy


@pytest.fixture
def fit_heads():
    """Folds (made, or copied from `folds_csv`), features and every head of a config, into `out`."""
    from smart_product.features import make_features
    from smart_product.folds import make_folds
    from smart_product.heads import train_heads

    def _fit(data_dir, out, overrides, folds_csv=None):
        cfg = load_config(None, [f"out_dir={out}", *overrides], str(data_dir))
        if folds_csv is None:
            make_folds(cfg)
        else:
            (Path(out) / "folds").mkdir(parents=True, exist_ok=True)
            (Path(out) / "folds" / "folds.csv").write_bytes(Path(folds_csv).read_bytes())
        make_features(cfg)
        return cfg, train_heads(cfg)

    return _fit


@pytest.fixture
def permute_fold(demo_dir, copy_data):
    """The demo data with fold k's labels permuted among its rows (the folds of `folds_csv`):
    returns (data dir, each train row's fold, fold k's row positions)."""

    def _permute(folds_csv, k):
        folds = pd.read_csv(folds_csv)
        train = pd.read_parquet(demo_dir / "train.parquet")
        fold_of = folds.set_index("product_id").loc[train.product_id, "fold"].to_numpy()
        rows = np.flatnonzero(fold_of == k)
        permuted = train.copy()
        permuted.loc[rows, "category_id"] = np.random.default_rng(0).permutation(train.category_id.to_numpy()[rows])
        assert (permuted.category_id != train.category_id).sum() > len(rows) // 2
        return copy_data(train=permuted), fold_of, rows

    return _permute


def make_competition_like(out: Path, n_classes: int = 215, per_class: int = 3, singletons: int = 5, seed: int = 0):
    """A catalogue built the way the competition's files are: parquet with integer ids, `text_fields`
    as JSON strings (HTML description, attributes, the three dicts), no category_name, photos at
    images/{split}/{product_id}.jpg, and what a user's folder also holds: an extra column
    (`source`) and an extra file (sample_submission.csv). Cyrillic titles; `singletons` classes
    have one train row and no test row."""
    import json

    from PIL import Image

    rng = np.random.default_rng(seed)
    letters = list("абвгдежзиклмнопрстуфхцчшэюя")
    words = ["".join(rng.choice(letters, 6)) for _ in range(n_classes)]
    colours = rng.integers(0, 256, (n_classes, 3))
    rows = []
    pid = 1000
    for c in range(n_classes):
        n_tr = 1 if c < singletons else per_class
        for i in range(n_tr + (0 if c < singletons else 1)):
            pid += int(rng.integers(1, 5))
            extra = words[int(rng.integers(n_classes))]
            fields = {
                "title": f"{words[c]} {extra} {i}",
                "description": f"<p>{words[c]} <b>{extra}</b></p>",
                "attributes": [words[c][:3]],
                "custom_characteristics": {},
                "defined_characteristics": {"цвет": [str(int(colours[c, 0]))]},
                "filters": {"тип": [words[c]]},
            }
            rows.append(
                {
                    "product_id": pid,
                    "category_id": 10_000 + c,
                    "sale": bool(rng.random() < 0.2),
                    "shop_id": int(rng.integers(1, 40)),
                    "shop_title": f"shop {int(rng.integers(1, 40))}",
                    "rating": float("nan") if rng.random() < 0.3 else float(rng.uniform(1, 5)),
                    "text_fields": json.dumps(fields, ensure_ascii=False),
                    "source": "scrape",  # a column the pipeline does not read
                    "split": "test" if i == n_tr else "train",
                }
            )
    df = pd.DataFrame(rows)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        part = df[df.split == split].drop(columns="split").reset_index(drop=True)
        if split == "test":
            part = part.drop(columns="category_id")
        part.to_parquet(out / f"{split}.parquet", index=False)
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        for p, c in zip(part.product_id, df.loc[df.split == split, "category_id"]):
            colour = tuple(int(v) for v in colours[c - 10_000])
            Image.new("RGB", (48, 48), colour).save(out / "images" / split / f"{p}.jpg")
    pd.DataFrame({"product_id": df.loc[df.split == "test", "product_id"], "predicted_category_id": 0}).to_parquet(
        out / "sample_submission.parquet", index=False
    )
    return out
