import json

from smart_product.bench import run_bench
from smart_product.config import load_config


def test_bench_writes_results_with_peer_timings_and_memory(demo_dir, tmp_path):
    cfg = load_config(None, [f"out_dir={tmp_path}",
                             "features.sets={tabular: {kind: tabular}, tfidf_sparse: {kind: tfidf_sparse}}",
                             "heads={tfidf_lr: {kind: linear, features: [tfidf_sparse, tabular], params: {C: 10, max_iter: 200}}}",
                             "blend.trials=10"], str(demo_dir))
    res = run_bench(cfg)
    saved = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert saved == res
    models = {r["model"]: r for r in res["results"]}
    assert set(models) == {"tfidf_lr", "blend", "peer: TF-IDF + LogReg"}
    assert 0.5 < models["peer: TF-IDF + LogReg"]["test_weighted_f1"] <= 1      # far above chance (60 classes)
    assert 0.5 < models["blend"]["test_weighted_f1"] <= 1 and models["blend"]["oof_weighted_f1"] > 0.5
    assert set(res["stage_seconds"]) == {"folds", "features", "train", "blend"}
    assert all(v >= 0 for v in res["stage_seconds"].values()) and res["pipeline_seconds"] > 0
    assert 0.05 < res["peak_rss_gib"] < 24
    assert res["error_ratio_blend_vs_peer"] > 0
    assert "goal <= 0.75" in (tmp_path / "bench" / "results.md").read_text()
