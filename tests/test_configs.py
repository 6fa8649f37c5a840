"""Every shipped config loads and is consistent: heads name known kinds and feature sets, and a
head with test_from: full only uses sets that have fold -1 (computed once, or full_fit)."""

from pathlib import Path

import pytest

from smart_product.config import ConfigError, load_config
from smart_product.features import feature_sets, is_per_fold
from smart_product.heads import HEADS

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_is_consistent(path):
    cfg = load_config(path)
    sets = feature_sets(cfg)
    heads = {n: h for n, h in cfg["heads"].items() if h.get("enabled", True)}
    assert heads, path
    for name, h in heads.items():
        assert h["kind"] in HEADS, (path.name, name)
        for f in h["features"]:
            assert f in sets, (path.name, name, f)
            if h.get("test_from") == "full" and is_per_fold(sets[f]):
                assert sets[f].get("full_fit"), f"{path.name}: {name} needs fold -1 of {f} (full_fit: true)"
    pseudo = cfg.get("pseudo") or {}
    for h in (pseudo.get("heads") or []) + (pseudo.get("sources") or []):
        assert h in heads, (path.name, "pseudo", h)  # a pseudo-label head that runs


def test_overrides_and_bad_config(tmp_path):
    cfg = load_config(None, ["folds.k=7", "heads.mlp.params.dropout=0.2"])
    assert cfg["folds"]["k"] == 7 and cfg["heads"]["mlp"]["params"]["dropout"] == 0.2
    assert cfg["heads"]["mlp"]["params"]["hidden"] == [512, 256, 128]  # the rest kept
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, ["folds.k"])
    (tmp_path / "bad.yaml").write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
