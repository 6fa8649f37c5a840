"""Real-data smoke test on ../shared/data/flipkart (62 classes, 16 singletons, 3 missing images)."""

import json
from pathlib import Path

import pytest
from conftest import SHARED

FLIPKART = SHARED / "flipkart"
pytestmark = pytest.mark.skipif(not (FLIPKART / "train.parquet").is_file(), reason="../shared/data not present")


def test_flipkart_end_to_end_cheap(tmp_path):
    from smart_product.blend import run_blend
    from smart_product.config import load_config
    from smart_product.data import DataError
    from smart_product.features import make_features
    from smart_product.folds import make_folds
    from smart_product.heads import run_head, train_heads
    from smart_product.report import make_report
    from smart_product.submit import score_submission

    cfg = load_config(
        None,
        [
            f"out_dir={tmp_path}",
            "features.sets={tabular: {kind: tabular}, tfidf: {kind: tfidf, svd_dim: 128},"
            " tfidf_sparse: {kind: tfidf_sparse}}",
            "heads={tfidf_lr: {kind: linear, features: [tfidf_sparse], params: {C: 0.5, solver: svm}, calibrate: true},"
            " mlp: {kind: mlp, features: [tabular, tfidf], params: {hidden: [256, 128, 64], max_epochs: 80}}}",
            "blend.trials=40",
            "blend.stack.bags=1",  # one stacker net: bagging has its own test
            "pseudo.rounds=0",
        ],
        str(FLIPKART),
    )  # pseudo-label rounds have their own tests
    meta = json.loads(make_folds(cfg).with_name("meta.json").read_text())
    assert meta["never_validated_rows"] == 16
    make_features(cfg)
    metrics = train_heads(cfg)
    for name, m in metrics.items():
        assert m["overall"]["weighted_f1"] > 0.7 and m["overall"]["rows"] == 843 - 16, name
    assert "16 rows never validated" in make_report(cfg).read_text()
    blend = run_blend(cfg)
    assert blend["oof_refit"]["weighted_f1"] >= max(m["overall"]["weighted_f1"] for m in metrics.values())
    score = score_submission(Path(tmp_path) / "submissions" / "blend.csv", FLIPKART / "solution.csv")
    assert score["weighted_f1"] > 0.85 and score["rows"] == 207
    bad = {**cfg, "heads": {"x": {"kind": "mlp", "features": ["tfidf_sparse"]}}}
    with pytest.raises(DataError, match="needs dense features"):
        run_head(bad, "x", write=False)
