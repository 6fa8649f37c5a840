"""Shared fixtures: the demo data set is generated once per test session into a temp dir."""
from __future__ import annotations

from pathlib import Path

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
