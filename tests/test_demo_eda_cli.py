import json
import subprocess
import sys

import numpy as np
import pandas as pd

from smart_product.cli import main
from smart_product.demo import make_demo_data


def test_demo_data_layout_and_determinism(demo_dir, tmp_path):
    again = make_demo_data(tmp_path / "again", seed=0, test_frac=0.25)
    for name in ("train.parquet", "test.parquet", "solution.csv"):
        assert (again / name).read_bytes() == (demo_dir / name).read_bytes()
    train = pd.read_parquet(demo_dir / "train.parquet")
    counts = train.category_id.value_counts()
    assert 55 <= len(counts) <= 65
    assert (counts == 1).sum() >= 3 and counts.between(2, 4).sum() >= 5
    assert counts.max() > 20 * counts.median() / 2  # power law, not uniform
    test = pd.read_parquet(demo_dir / "test.parquet")
    sol = pd.read_csv(demo_dir / "solution.csv")
    assert set(sol.product_id) == set(test.product_id) and set(sol.category_id) <= set(counts.index)
    assert train.text_fields.str.contains("[а-яА-Я]", regex=True).all()  # Russian text
    assert train.text_fields.str.contains("<p>").mean() > 0.9  # HTML descriptions
    # products listed as variants: the same description under several titles, never across the split
    desc = lambda df: df.text_fields.map(lambda t: json.loads(t)["description"])  # noqa: E731
    d_train, d_test = desc(train), desc(test)
    assert 0.4 < d_train.duplicated(keep=False).mean() < 0.9
    assert not set(d_train[d_train != ""]) & set(d_test[d_test != ""])


def test_eda_writes_report_and_plot(demo_dir, make_cfg):
    from smart_product.eda import run_eda

    report = run_eda(make_cfg(demo_dir))
    text = report.read_text()
    assert "singleton classes: 5" in text and "missing: 4, corrupt: 2" in text
    assert "## Near-duplicate listings" in text and "**grouped by near-duplicate cluster**" in text
    assert "## Identical titles, different categories" in text
    assert (report.parent / "eda.png").stat().st_size > 10_000
    assert len(pd.read_csv(report.parent / "images_broken.csv")) == 6


def test_title_twins_predicts_each_row_by_its_twins_majority_leaving_it_out():
    from smart_product.eda import title_twins, twin_majority

    keys = pd.Series(["a", "a", "a", "b", "b", "c", None, "d"]).dropna()  # row 6: no title
    y = np.array([1, 1, 2, 3, 4, 5, 5, 5])
    # rows 0, 1: the others are {1, 2}, a tie, the smaller wins: right; row 2: {1, 1}: wrong;
    # rows 3, 4: one twin of another class; rows 5-7: no twin
    np.testing.assert_array_equal(twin_majority(keys, y), [1, 1, 0, 0, 0, np.nan, np.nan, np.nan])
    train = pd.DataFrame(
        {
            "title": ["Red  Mug!", "red mug", "red mug", "Blue cup", "blue, cup", None],
            "shop_id": [1, 1, 2, 1, 1, 1],
            "category_id": [7, 7, 8, 9, 9, 9],
        }
    )
    res, has = title_twins(train)  # case, spaces, punctuation ignored
    assert has.tolist() == [True] * 5 + [False]
    assert res["rows_with_a_twin"] == 5 and res["twin_majority_accuracy"] == 0.8  # row 2's twins say 7
    assert res["rows_with_a_shop_twin"] == 4 and res["shop_twin_majority_accuracy"] == 1.0


def test_cli_bad_data_is_one_line_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "smart_product", "folds", "--data", str(tmp_path)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and "train.parquet: missing file" in proc.stderr


def test_cli_folds_runs(demo_dir, tmp_path):
    assert main(["folds", "--data", str(demo_dir), f"out_dir={tmp_path}", "-q"]) == 0
    folds = pd.read_csv(tmp_path / "folds" / "folds.csv")
    assert np.sort(folds.fold.unique()).tolist() == [-1, 0, 1, 2, 3, 4]


def test_the_blend_stage_ends_with_where_the_time_went_then_the_upload_line(demo_dir, tmp_path, capsys):
    """Each CLI stage records its seconds, peak RSS and parts in reports/timings.json; the blend prints
    the table (stages in make all's order, sets and heads under them, cached ones marked) before the
    file to upload."""
    import json

    sets = "features.sets={tabular: {kind: tabular}, tfidf: {kind: tfidf, svd_dim: 32}}"
    heads = "heads={lr: {kind: logreg, features: [tfidf], params: {C: 0.1}}, knn: {kind: knn, features: [tfidf]}}"
    common = ["--data", str(demo_dir), "--config", "configs/cpu.yaml", f"out_dir={tmp_path}", "-q", sets, heads]
    blend = ["blend.trials=5", "blend.procedures=[optuna_logloss, best_single]", "errors.pairs=3"]
    for stage in ("folds", "features", "train"):
        assert main([stage, *common]) == 0
    assert main(["features", *common]) == 0  # a rerun: every set cached
    assert main(["blend", *common, *blend]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith(f"upload: {tmp_path / 'submissions' / 'blend.parquet'}")
    start = next(i for i, line in enumerate(out) if line.startswith("Where the time went"))
    table = out[start:-1]
    rows = [r.split("|")[1:-1] for r in table[4:] if r.startswith("| ")]  # past the header
    stages = [r[0].strip() for r in rows if r[0].strip()]
    assert stages == ["folds", "features", "train", "blend", "**make all stages**"]
    parts = {r[1].strip(): r[2].strip() for r in rows if not r[0].strip()}
    assert parts["tfidf"] == "cached" and parts["tabular"] == "cached"  # the last features run computed nothing
    assert float(parts["lr"]) > 0 and float(parts["errors"]) > 0 and float(parts["blend"]) > 0
    rec = json.loads((tmp_path / "reports" / "timings.json").read_text())
    assert set(rec) == {"folds", "features", "train", "blend"} and all(r["peak_rss_gib"] > 0.1 for r in rec.values())
    total = sum(r["seconds"] for r in rec.values())
    assert f"**{total:.1f}**" in next(r for r in table if r.startswith("| **make all stages**"))
    assert (tmp_path / "reports" / "timings.md").read_text().splitlines()[0] == table[0]
    assert (tmp_path / "oof" / "errors" / "errors.md").is_file()
