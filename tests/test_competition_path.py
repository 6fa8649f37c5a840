"""The competition's path as a new user walks it: the README's commands in their order in a fresh
folder, CONFIG=auto's choice, outputs that never collide, and bad input that stops with one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_competition_like

from smart_product import auto
from smart_product.config import load_config
from smart_product.data import DataError, check_photos, load_data

ROOT = Path(__file__).resolve().parents[1]

# the demo's run in the fresh folder, at a test's cost: two cheap sets, one head, no stacker
QUICK = """name: demo-quick
data_dir: data/demo
out_dir: .
folds: {k: 5, seed: 42, group_col: auto, dups: {image_hamming: null}}
features: {sets: {tabular: {kind: tabular}, tfidf: {kind: tfidf, svd_dim: 32}}}
heads: {lr: {kind: logreg, features: [tabular, tfidf], params: {C: 0.1, max_iter: 50}}}
blend: {procedures: [best_single], stack: false, trials: 5}
"""


def _make(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    # the fresh folder's package, not this checkout's; and a user's shell, not a recursive make's
    # (under `make test` MAKELEVEL would add make's "Leaving directory" lines to the output)
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES")}
    env["PYTHONPATH"] = str(cwd / "src")
    return subprocess.run(
        ["make", f"PY={sys.executable}", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=1200
    )


@pytest.fixture(scope="module")
def fresh(demo_dir, tmp_path_factory):
    """A fresh folder holding the repository's code, the demo run done in it as the README's first
    command does (the demo's data and outputs in the folder itself), and a competition-like
    catalogue of 215 classes beside it."""
    root = tmp_path_factory.mktemp("fresh") / "smart-product"
    for part in ("src", "configs"):
        shutil.copytree(ROOT / part, root / part, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(ROOT / "Makefile", root / "Makefile")
    (root / "configs" / "demo-quick.yaml").write_text(QUICK)
    (root / "data").mkdir()
    (root / "data" / "demo").symlink_to(demo_dir)
    demo = _make(root, "all", "CONFIG=configs/demo-quick.yaml")
    assert demo.returncode == 0, demo.stderr[-3000:]
    catalogue = make_competition_like(tmp_path_factory.mktemp("competition") / "kazanexpress")
    return root, catalogue


def test_the_readmes_order_demo_then_a_competition_catalogue_with_no_config_and_no_out(fresh):
    root, data = fresh
    demo_files = {p: p.stat().st_mtime_ns for d in ("folds", "oof", "submissions") for p in (root / d).rglob("*")}
    assert (root / "submissions" / "blend.parquet").is_file() and (root / "oof" / "lr" / "oof.npy").is_file()

    run = _make(root, "all", f"DATA={data}")  # the README's competition command, verbatim: no CONFIG, no OUT
    assert run.returncode == 0, run.stderr[-3000:]
    log = run.stdout + run.stderr
    assert "CONFIG=auto picked configs/cpu-xl.yaml" in log and "estimate ~" in log
    out = root / "runs" / "kazanexpress"
    upload = out / "submissions" / "blend.parquet"
    assert run.stdout.strip().splitlines()[-1].startswith(f"upload: {upload}")  # the blend's last line names it
    sub = pd.read_parquet(upload)
    test = pd.read_parquet(data / "test.parquet")
    assert list(sub.columns) == ["product_id", "predicted_category_id"]
    assert sorted(sub.product_id) == sorted(test.product_id)
    assert set(sub.predicted_category_id) <= set(pd.read_parquet(data / "train.parquet").category_id)
    report = (out / "oof" / "report.md").read_text()
    assert "| blend |" in report and "| lr |" not in report  # the config's heads only: nothing of the demo's
    # nothing of the demo's outputs was touched, and nothing of the catalogue's went there
    assert {p: p.stat().st_mtime_ns for p in demo_files if p.exists()} == demo_files
    assert not (root / "oof" / "fields_net").exists()

    check = _make(root, "validate-sub", f"DATA={data}")  # the run's own upload file, against its data
    assert check.returncode == 0 and f"{upload}: valid for {data}" in check.stdout

    # one head removed from the config, the blend rerun: no error, and the head is out of blend and report
    (root / "configs" / "mine.yaml").write_text("base: cpu-xl.yaml\nname: mine\nheads: {knn_title: {enabled: false}}\n")
    again = _make(root, "blend", f"DATA={data}", "CONFIG=configs/mine.yaml")
    assert again.returncode == 0, again.stderr[-3000:]
    weights = json.loads((out / "oof" / "blend" / "weights.json").read_text())
    assert "knn_title" not in weights["heads"] and "fields_net" in weights["heads"]
    assert "| knn_title |" not in (out / "oof" / "report.md").read_text()
    assert "nothing to do" in again.stderr  # the heads were not refit

    clean = _make(root, "clean", f"DATA={data}")  # make clean honours the run's outputs, not the demo's
    assert clean.returncode == 0 and not upload.exists()
    assert (root / "submissions" / "blend.parquet").is_file()


def test_a_submission_checked_against_the_wrong_data_is_one_line(fresh, demo_dir):
    root, data = fresh
    wrong = _make(root, "validate-sub", f"DATA={data}", f"SUB={root / 'submissions' / 'blend.parquet'}")
    err = wrong.stderr.strip().splitlines()
    assert wrong.returncode != 0 and err[0].startswith("error: ") and "missing" in err[0]
    score = _make(root, "score", f"DATA={data}")  # the competition has no solution file
    assert score.returncode != 0 and "no solution file" in score.stderr and "make validate-sub" in score.stderr


def _stats(**kw) -> auto.DataStats:
    base = dict(rows=2000, test_rows=500, classes=60, photo_share=1.0, script="cyrillic")
    return auto.DataStats(**{**base, **kw})


CPU = auto.Machine(cuda=False, cores=2, mem_gib=24, bf16=True)
GPU = auto.Machine(cuda=True, cores=16, mem_gib=128, bf16=True)


def test_auto_picks_from_the_data_and_the_machine(demo_dir, tmp_path):
    demo = auto.data_stats(demo_dir)
    assert (demo.classes, demo.script) == (60, "cyrillic") and demo.photo_share > 0.99
    assert auto.choose(demo, CPU).name == "cpu"  # the demo's own config
    catalogue = auto.data_stats(make_competition_like(tmp_path / "k"))
    assert catalogue.classes == 215 and auto.choose(catalogue, CPU).name == "cpu-xl"
    no_photos = tmp_path / "k2"
    shutil.copytree(demo_dir, no_photos, ignore=shutil.ignore_patterns("images"))
    text_only = auto.data_stats(no_photos)
    assert text_only.photo_share == 0 and auto.choose(text_only, CPU).name == "cpu-large"
    assert auto.choose(_stats(script="latin"), CPU).name == "cpu-large"  # flipkart's shape
    assert auto.choose(_stats(rows=91_000, classes=864, photo_share=0), CPU).name == "cpu-xl"  # ozon's
    # CUDA present
    assert auto.choose(demo, GPU).name == "gpu-offline-fusion" and auto.choose(catalogue, GPU).name == "gpu-xl"
    assert auto.choose(_stats(script="latin"), GPU).name == "gpu-offline"  # no fusion head for English titles
    # the estimate: along the measured runs; float32 backbones where bf16 is not native
    ozon = auto.choose(_stats(rows=90_951, test_rows=16_049, classes=864, photo_share=0), CPU)
    assert 24 * 60 < ozon.seconds < 27 * 60 and 6.0 < ozon.gib < 6.3  # measured: 25.7 min, 6.14 GiB
    between = auto.estimate("cpu-xl", _stats(rows=60_000, classes=500, photo_share=0), CPU)[0]
    assert auto.estimate("cpu-xl", _stats(rows=35_556, photo_share=0), CPU)[0] < between < ozon.seconds
    slow = auto.Machine(cuda=False, cores=2, mem_gib=24, bf16=False)
    assert auto.choose(demo, slow).seconds == pytest.approx(auto.choose(demo, CPU).seconds * auto.FLOAT32_FACTOR)


def test_auto_through_load_config_logs_one_line_and_mocked_cuda_changes_it(demo_dir, monkeypatch, caplog):
    caplog.set_level("INFO", logger="smart_product.auto")
    cfg = load_config("auto", [], str(demo_dir))
    assert cfg["name"] == "cpu" and cfg["config_file"] == "auto"
    lines = [r.message for r in caplog.records if "CONFIG=auto" in r.message]
    assert len(lines) == 1 and "\n" not in lines[0] and "configs/cpu.yaml" in lines[0] and "GiB" in lines[0]
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert load_config("auto", [], str(demo_dir))["name"] == "gpu-offline-fusion"


def test_a_catalogues_outputs_default_apart_from_the_demos(demo_dir, tmp_path):
    assert Path(load_config(None)["out_dir"]) == ROOT  # the demo: the repository's folders
    cat = load_config(None, [], str(tmp_path / "kazan"))
    assert Path(cat["out_dir"]) == ROOT / "runs" / "kazan"
    assert Path(load_config(None, [f"out_dir={tmp_path}"], str(tmp_path / "kazan"))["out_dir"]) == tmp_path


def test_python_below_the_floor_stops_setup_in_one_line(tmp_path):
    fake = tmp_path / "python3.10"
    fake.write_text('#!/bin/sh\ncase "$1" in --version) echo "Python 3.10.12";; *) exit 1;; esac\n')
    fake.chmod(0o755)
    run = subprocess.run(["make", "-C", str(ROOT), "python-check", f"PYTHON={fake}"], capture_output=True, text=True)
    said = [ln for ln in run.stdout.splitlines() if ln.startswith("setup:")]
    assert run.returncode != 0 and len(said) == 1
    assert "Python >= 3.11" in said[0] and "Python 3.10.12" in said[0] and "PYTHON=python3.11" in said[0]
    assert subprocess.run(["make", "-C", str(ROOT), "python-check"], capture_output=True).returncode == 0


def test_photos_misplaced_stop_in_one_line_and_images_off_runs_text_only(demo_dir, copy_data, tmp_path):
    data = copy_data()
    train, test = load_data(data, parse_text=False)
    assert check_photos(data, train, test).startswith("photos: ")
    # a misnamed folder: DATA/imgs instead of DATA/images
    (data / "images").unlink()
    (data / "imgs").symlink_to(demo_dir / "images")
    train, test = load_data(data, parse_text=False)
    with pytest.raises(DataError) as err:
        check_photos(data, train, test)
    msg = str(err.value)
    assert "\n" not in msg and f"{data / 'images'}: missing" in msg and str(data / "imgs") in msg
    assert "IMAGES=off" in msg
    assert "text-only" in check_photos(data, train, test, images="off")
    # an images/ folder whose files are not at images/{split}/{product_id}.jpg
    (data / "imgs").unlink()
    flat = data / "images"
    flat.mkdir()
    for p in sorted((demo_dir / "images" / "train").glob("*.jpg"))[:50]:
        shutil.copy(p, flat / p.name)
    train, test = load_data(data, parse_text=False)
    with pytest.raises(DataError) as err:
        check_photos(data, train, test)
    msg = str(err.value)
    assert "\n" not in msg and "of 2000 train rows" in msg and "the first missing is" in msg
    assert str(flat / "train") in msg and "50 photo files" in msg
    # no images/ folder and no photos anywhere: a text-only run, said so
    shutil.rmtree(flat)
    train, test = load_data(data, parse_text=False)
    assert "text-only" in check_photos(data, train, test)


def test_images_off_is_in_the_image_sets_key_and_skips_them(demo_dir):
    cfg = load_config(None, ["images=off"], str(demo_dir))
    assert cfg["features"]["sets"]["image"]["images"] == "off"
    from smart_product.features.backbone import absent_modality

    train, test = load_data(demo_dir, parse_text=False)
    assert "IMAGES=off" in absent_modality(train, test, {**cfg["features"]["sets"]["image"], "name": "image"})
    with pytest.raises(Exception, match="auto .* or off"):
        load_config(None, ["images=maybe"], str(demo_dir))


def test_a_null_or_empty_text_fields_is_a_product_without_text(demo_dir, copy_data, caplog):
    df = pd.read_parquet(demo_dir / "train.parquet")
    df["text_fields"] = df["text_fields"].astype(object)
    df.loc[3, "text_fields"] = None
    df.loc[5, "text_fields"] = ""
    data = copy_data(train=df)
    caplog.set_level("WARNING")
    train, _ = load_data(data)
    assert train.loc[3, "title"] == "" and train.loc[5, "description"] == "" and train.loc[4, "title"] != ""
    said = [r.message for r in caplog.records if "text_fields" in r.message]
    assert len(said) == 1 and "2 null or empty values" in said[0] and str(df.product_id[3]) in said[0]


def test_a_stale_oof_folder_names_itself_and_its_command_fixes_it(demo_dir, copy_data, tmp_path):
    """Heads made for one data set, the blend asked for another in the same OUT: one line naming
    the folder and a command; that command's work (folds, features, train) makes the blend run."""
    from smart_product.blend import run_blend
    from smart_product.cli import main

    cheap = [
        "features.sets={tabular: {kind: tabular}, tfidf: {kind: tfidf, svd_dim: 32}}",
        "heads={lr: {kind: logreg, features: [tabular, tfidf], params: {C: 0.1, max_iter: 50}}}",
        "blend.procedures=[best_single]",
        "blend.stack=false",
        "folds.dups.image_hamming=null",
    ]
    out = tmp_path / "out"
    args = ["--config", str(ROOT / "configs" / "cpu.yaml"), f"out_dir={out}", *cheap, "-q"]
    for stage in ("folds", "features", "train", "blend"):
        assert main([stage, "--data", str(demo_dir), *args]) == 0
    train = pd.read_parquet(demo_dir / "train.parquet")
    other = copy_data(train=train.iloc[50:].reset_index(drop=True))  # another data set: 50 rows fewer
    cfg = load_config(str(ROOT / "configs" / "cpu.yaml"), [f"out_dir={out}", *cheap], str(other))
    with pytest.raises(DataError) as err:
        run_blend(cfg)
    msg = str(err.value)
    assert "\n" not in msg and f"{out / 'oof' / 'lr'}: made for other data than {other}" in msg
    assert f"`make train DATA={other} OUT={out} CONFIG=" in msg
    for stage in ("folds", "features", "train", "blend"):  # what `make train` runs (its prerequisites), then blend
        assert main([stage, "--data", str(other), *args]) == 0
    assert np.array_equal(np.load(out / "oof" / "lr" / "train_ids.npy"), train.product_id[50:].to_numpy())
