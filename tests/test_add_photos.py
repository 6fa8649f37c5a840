"""benchmarks/add_photos.py: a photo per row of a catalogue, with the odd uploads real catalogues have,
and what the pipeline's image checks and decoder make of each odd kind."""

from __future__ import annotations

import hashlib
import importlib
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def add_photos():
    sys.path.insert(0, str(ROOT / "benchmarks"))  # a module by name, so worker processes can load its jobs
    try:
        yield importlib.import_module("add_photos")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_add_photos_gives_every_row_a_photo_and_each_odd_upload_is_caught(add_photos, demo_dir, tmp_path):
    from PIL import Image

    from smart_product.data import ID, check_images, load_data
    from smart_product.images import decode

    out = tmp_path / "catalogue"
    res = add_photos.main(
        ["--data", str(demo_dir), "--out", str(out), "--size", "64", "--broken", "0", "--workers", "2"]
    )
    for name in ("train.parquet", "test.parquet", "solution.csv"):  # linked, not copied
        assert (out / name).is_symlink() and (out / name).resolve() == (demo_dir / name).resolve()
    odd = pd.read_csv(out / "photos_odd.csv")
    assert sorted(odd["kind"]) == sorted(add_photos.ODD_KINDS)  # --broken 0: one of each kind
    assert res["odd"] == {k: 1 for k in add_photos.ODD_KINDS}

    train, test = load_data(out, parse_text=False)
    rows = pd.concat([train, test], ignore_index=True)
    checked = check_images(rows, deep=True)
    status = dict(zip(checked[ID], checked["status"]))
    kind_of = dict(zip(odd[ID], odd["kind"]))
    want = {"missing": "missing", "empty": "corrupt", "truncated": "corrupt"}
    assert {pid: status[pid] for pid in kind_of} == {pid: want.get(k, "ok") for pid, k in kind_of.items()}
    assert all(status[pid] == "ok" for pid in rows[ID] if pid not in kind_of)

    files = sorted((out / "images").rglob("*.jpg"))
    assert len(files) == len(rows) - 1  # the missing one
    plain = [f for f in files if int(f.stem) not in kind_of]
    assert len({hashlib.sha1(f.read_bytes()).hexdigest() for f in plain}) == len(plain)  # unique per row
    for f in plain[:: max(1, len(plain) // 50)]:
        with Image.open(f) as img:
            assert img.format == "JPEG" and img.size == (64, 64) and img.mode == "RGB"

    # the readable odd ones decode to the row's own photo: regenerate it as a plain JPEG to compare
    plan = add_photos.plan(demo_dir, 0, 0.0).set_index(ID)
    for pid, kind in kind_of.items():
        if kind in want:
            continue
        split = plan.loc[pid, "split"]
        (tmp_path / "plain" / split).mkdir(parents=True, exist_ok=True)
        look = add_photos.class_look(int(plan.loc[pid, "cls"]))
        add_photos._job((pid, split, look, plan.loc[pid, "key"], "ok", 64, 90, 0, str(tmp_path / "plain")))
        ref = decode(tmp_path / "plain" / split / f"{pid}.jpg", 64).astype(float)
        got = decode(out / "images" / split / f"{pid}.jpg", 64)
        assert got is not None and got.shape == (64, 64, 3), kind
        if kind == "grayscale":
            assert (got[..., 0] == got[..., 1]).all() and (got[..., 1] == got[..., 2]).all()
            assert abs(got.mean() - ref.mean()) < 20
        elif kind == "png16":  # not PIL's all-white conversion
            assert abs(got.mean() - ref.mean()) < 20 and got.mean() < 250
        else:  # png_named_jpg, cmyk, exif_rotated (turned back upright), huge
            assert np.abs(got - ref).mean() < 8, kind
        if kind == "huge":
            with Image.open(out / "images" / split / f"{pid}.jpg") as img:
                assert img.size == (add_photos.HUGE, add_photos.HUGE)


def test_add_photos_is_deterministic_and_a_listing_shares_its_shot(add_photos, demo_dir, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        add_photos.main(["--data", str(demo_dir), "--out", str(out), "--size", "48", "--limit", "40", "--workers", "1"])
    fa = sorted((a / "images").rglob("*.jpg"))
    assert len(fa) >= 39 and all(f.read_bytes() == (b / f.relative_to(a)).read_bytes() for f in fa)

    look = add_photos.class_look(3)
    rng = np.random.default_rng

    def photo(key, row):
        return np.asarray(add_photos.draw(add_photos.shot(look, key, 0), 64, rng(row)), dtype=float)

    same = np.abs(photo("shop|mug", 1) - photo("shop|mug", 2)).mean()  # two variants of one listing
    other = np.abs(photo("shop|mug", 1) - photo("shop|cup", 3)).mean()  # the same class, another listing
    assert same < other / 2
    assert add_photos.class_look(3) != add_photos.class_look(4)


def test_each_odd_upload_through_the_eda_and_the_image_features(add_photos, demo_dir, tmp_path, make_cfg):
    """On a small catalogue with one upload of each odd kind: the unreadable ones (truncated, empty,
    missing) are counted, listed in reports/eda/images_broken.csv and embed as zeros with
    has_image = False; the readable odd ones embed; no other row's embedding changes."""
    import json

    from smart_product.data import ID
    from smart_product.eda import run_eda
    from smart_product.features import make_features
    from smart_product.folds import make_folds

    out = tmp_path / "catalogue"
    add_photos.main(["--data", str(demo_dir), "--out", str(out), "--size", "48", "--broken", "0", "--workers", "2"])
    odd = pd.read_csv(out / "photos_odd.csv")
    sets = (
        "features.sets={tabular: {kind: tabular}, image: {kind: image, model: test_efficientnet, "
        "weights: random, image_size: 32}}"
    )
    cfg = make_cfg(out, sets, "folds.dups.image_hamming=null")
    make_folds(cfg)
    make_features(cfg)
    run_eda(cfg)
    broken = pd.read_csv(Path(cfg["out_dir"]) / "reports" / "eda" / "images_broken.csv")
    unreadable = odd[odd["kind"].isin(["truncated", "empty", "missing"])]
    assert sorted(broken[ID]) == sorted(unreadable[ID])
    assert dict(zip(broken[ID], broken["status"])) == {
        pid: "missing" if k == "missing" else "corrupt" for pid, k in zip(unreadable[ID], unreadable["kind"])
    }

    # the same catalogue with every odd photo replaced by its row's plain one
    plain = tmp_path / "plain"
    shutil.copytree(out, plain, symlinks=True)
    plan = add_photos.plan(demo_dir, 0, 0.0).set_index(ID)
    for pid in odd[ID]:
        split, look = plan.loc[pid, "split"], add_photos.class_look(int(plan.loc[pid, "cls"]))
        (plain / "images" / split / f"{pid}.jpg").unlink(missing_ok=True)
        add_photos._job((pid, split, look, plan.loc[pid, "key"], "ok", 48, 90, 0, str(plain / "images")))
    cfg_plain = make_cfg(plain, sets, "folds.dups.image_hamming=null", f"out_dir={tmp_path / 'work_plain'}")
    make_folds(cfg_plain)
    make_features(cfg_plain)

    def matrices(c):
        root = Path(c["out_dir"]) / "features"
        tab = json.loads((root / "tabular" / "meta.json").read_text())["columns"].index("has_image")
        ids = np.concatenate([np.load(root / "image" / f"{s}_ids.npy") for s in ("train", "test")])
        img = np.vstack([np.load(root / "image" / f"{s}.npy") for s in ("train", "test")])
        has = np.concatenate([np.load(root / "tabular" / f"{s}.npy")[:, tab] for s in ("train", "test")])
        return pd.Series(range(len(ids)), index=ids), img, has

    at, img, has = matrices(cfg)
    at_p, img_p, has_p = matrices(cfg_plain)
    for pid, kind in zip(odd[ID], odd["kind"]):
        i = at[pid]
        if kind in ("truncated", "empty", "missing"):
            assert not img[i].any() and has[i] == 0, kind
        else:
            assert img[i].any() and has[i] == 1, kind
    others = np.setdiff1d(at.index, odd[ID])
    assert np.array_equal(img[at[others].to_numpy()], img_p[at_p[others].to_numpy()])
    assert (has_p == 1).all()
