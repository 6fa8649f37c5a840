import json

import pytest

from smart_product import bench as bench_mod
from smart_product.bench import run_bench
from smart_product.config import load_config

CHEAP = [
    "features.sets={tabular: {kind: tabular}, tfidf_sparse: {kind: tfidf_sparse, fields: {all: {word: [1, 2]}}}}",
    "heads={tfidf_lr: {kind: linear, features: [tfidf_sparse, tabular], params: {C: 0.5, solver: svm}}}",
    "blend.trials=10",
    "blend.stack.bags=1",
]  # one stacker net: the bagging has its own test
LR, SVM = "peer: TF-IDF + LogReg", "peer: TF-IDF + LinearSVC"


def test_bench_writes_results_with_peer_timings_and_memory(demo_dir, tmp_path):
    cfg = load_config(None, [f"out_dir={tmp_path}", *CHEAP], str(demo_dir))
    res = run_bench(cfg)
    saved = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert saved == res
    models = {r["model"]: r for r in res["results"]}
    assert set(models) == {"tfidf_lr", "blend", LR, SVM}  # 60 classes: both peers
    assert 0.5 < models[LR]["test_weighted_f1"] <= 1  # far above chance (60 classes)
    assert 0.5 < models[SVM]["test_weighted_f1"] <= 1
    assert 0.5 < models["blend"]["test_weighted_f1"] <= 1 and models["blend"]["oof_weighted_f1"] > 0.5
    assert set(res["stage_seconds"]) == {"folds", "features", "train", "blend"}
    assert all(v >= 0 for v in res["stage_seconds"].values()) and res["pipeline_seconds"] > 0
    assert 0.05 < res["peak_rss_gib"] < 24
    assert res["error_ratio_blend_vs_peer"] > 0
    stronger = max((LR, SVM), key=lambda m: models[m]["test_weighted_f1"])
    assert res["stronger_peer"] == stronger  # the ratio is taken against it
    blend_err, peer_err = 1 - models["blend"]["test_weighted_f1"], 1 - models[stronger]["test_weighted_f1"]
    assert res["error_ratio_blend_vs_peer"] == pytest.approx(blend_err / peer_err, abs=2e-3)
    assert "goal <= 0.75" in (tmp_path / "bench" / "results.md").read_text()


def test_bench_writes_results_when_a_peer_fails(demo_dir, tmp_path, monkeypatch):
    def out_of_memory(train, test, **kw):
        raise MemoryError("lbfgs history does not fit")

    monkeypatch.setitem(bench_mod.PEERS, "lr", (LR, out_of_memory))
    cfg = load_config(None, [f"out_dir={tmp_path}", *CHEAP], str(demo_dir))
    res = run_bench(cfg)
    models = {r["model"]: r for r in json.loads((tmp_path / "bench" / "results.json").read_text())["results"]}
    assert models[LR]["test_weighted_f1"] is None and "MemoryError" in models[LR]["error"]
    assert res["stronger_peer"] == SVM and res["error_ratio_blend_vs_peer"] > 0
    assert "failed (MemoryError" in (tmp_path / "bench" / "results.md").read_text()
    monkeypatch.setitem(bench_mod.PEERS, "svm", (SVM, out_of_memory))
    res = run_bench(cfg)  # every peer fails: still written
    assert res["stronger_peer"] is None and res["error_ratio_blend_vs_peer"] is None
    assert json.loads((tmp_path / "bench" / "results.json").read_text())["results"][0]["model"] == "tfidf_lr"


def test_peers_above_200_classes_are_linear_svc_only():
    assert bench_mod.peer_names({}, 142) == ["lr", "svm"]
    assert bench_mod.peer_names({}, 864) == ["svm"]
    assert bench_mod.peer_names({"peers": ["lr"]}, 864) == ["lr"]
    with pytest.raises(ValueError, match="unknown"):
        bench_mod.peer_names({"peers": ["xgb"]}, 10)


def test_catalogue_part_is_stratified_small_and_a_valid_catalogue(demo_dir, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    import pandas as pd
    from PIL import Image

    from smart_product.data import load_data

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "part"
    subprocess.run(
        [
            sys.executable,
            str(root / "benchmarks" / "catalogue_part.py"),
            "--data",
            str(demo_dir),
            "--out",
            str(out),
            "--frac",
            "0.3",
            "--max-side",
            "32",
        ],
        check=True,
        capture_output=True,
    )
    full, part_ = pd.read_parquet(demo_dir / "train.parquet"), pd.read_parquet(out / "train.parquet")
    assert set(part_.category_id) == set(full.category_id)  # every class keeps a training row
    assert abs(len(part_) / len(full) - 0.3) < 0.05
    counts = full.category_id.value_counts()
    big = counts[counts >= 20].index
    ratio = part_.category_id.value_counts()[big] / counts[big]
    assert ratio.between(0.2, 0.4).all()  # per class, not overall
    sol = pd.read_csv(out / "solution.csv")
    train, test = load_data(out)  # the pipeline's own loader accepts it
    assert sorted(test.product_id) == sorted(sol.product_id) and len(train) == len(part_)
    sizes = [Image.open(p).size for p in (out / "images" / "train").glob("*.jpg")]
    assert sizes and max(max(s) for s in sizes) <= 32


def test_resplit_holds_out_whole_clusters_with_every_class_in_train(demo_dir, tmp_path):
    """bench.resplit: a fifth of train becomes a labelled pseudo-test split; `grouped` keeps each
    near-duplicate cluster on one side, and every pseudo-test class keeps training rows."""
    import numpy as np
    import pandas as pd

    from smart_product import dups
    from smart_product.data import load_data, load_split

    cfg = load_config(None, [f"out_dir={tmp_path}"], str(demo_dir))
    full = load_split(demo_dir, "train")
    cluster = dict(zip(full.product_id, dups.find_clusters(full, full.iloc[:0], dups.dups_config(cfg))[0]["cluster"]))
    for kind in ("grouped", "random"):
        out = bench_mod.make_resplit(cfg, kind, seed=1)
        train, test = load_data(out)  # a valid catalogue
        sol = pd.read_csv(out / "solution.csv")
        assert sorted(sol.product_id) == sorted(test.product_id) and "category_id" not in test.columns
        assert len(train) + len(test) == len(full) and 0.15 < len(test) / len(full) < 0.25
        assert set(sol.category_id) <= set(train.category_id)  # no class unseen in train
        truth = full.set_index("product_id").loc[sol.product_id, "category_id"].to_numpy()
        assert np.array_equal(sol.category_id.to_numpy(), truth)
        assert test.has_image.sum() == full.set_index("product_id").loc[test.product_id, "has_image"].sum()
        split_of = {pid: s for s, f in (("train", train), ("test", test)) for pid in f.product_id}
        sides = (
            pd.Series([split_of[p] for p in full.product_id])
            .groupby(pd.Series([cluster[p] for p in full.product_id]))
            .nunique()
        )
        if kind == "grouped":
            assert (sides == 1).all()  # no cluster crosses the cut
        else:
            assert (sides > 1).any()  # rows, not clusters
    with pytest.raises(ValueError, match="grouped or random"):
        bench_mod.make_resplit(cfg, "by_shop")


def test_bench_on_a_resplit_reports_oof_against_pseudo_test(demo_dir, tmp_path):
    cfg = load_config(None, [f"out_dir={tmp_path}", *CHEAP, "bench.resplit=grouped", "bench.peers=[]"], str(demo_dir))
    res = run_bench(cfg)
    assert res["resplit"] == {"kind": "grouped", "seed": 0} and res["test_rows"] < res["train_rows"] / 3
    blend = next(r for r in res["results"] if r["model"] == "blend")
    assert 0.5 < blend["test_weighted_f1"] <= 1 and res["blend_oof_minus_test"] == blend["oof_minus_test"]
    assert res["best_head_by_test"]["model"] == "tfidf_lr"
    md = (tmp_path / "bench" / "results.md").read_text()
    assert "grouped resplit of train" in md and "no peer was run" in md and "None" not in md
