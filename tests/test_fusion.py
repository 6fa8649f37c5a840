"""The fusion set (features/fusion.py, backbones/fusion.py): the fold rule, rows without a photo,
the model's parts, the whole-backbone route (the GPU configs') on a CPU, config errors."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from smart_product.data import DataError
from smart_product.features import make_features
from smart_product.folds import make_folds

BACKBONES = (
    "image: {kind: image, model: test_efficientnet, weights: random, image_size: 32, batch_size: 128, workers: 0},"
    " text: {kind: text, model: tiny-random-bert, view: title, max_length: 16, batch_size: 256},"
)
CHEAP = " tabular: {kind: tabular}, tfidf: {kind: tfidf, svd_dim: 32},"


def fusion_sets(**options) -> str:
    opts = {
        "kind": "fusion",
        "image": "image",
        "train_blocks": 2,
        "text": "text",
        "train_layers": 1,
        "dense": "[tabular, tfidf]",
        "shop": "true",
        "adapter": 32,
        "epochs": 3,
        "lr": 0.01,
        "photo_lr": 0.003,
        "text_lr": 0.003,
        "batch_size": 64,
        **options,
    }
    body = ", ".join(f"{k}: {v}" for k, v in opts.items())
    return "features.sets={" + BACKBONES + CHEAP + " fusion: {" + body + "}}"


HEAD = "heads={fusion_cls: {kind: finetuned, features: [fusion]}}"
# the backbones lend their options to the fusion set only: they are not computed as sets of their own
OFF = ["features.sets.image.enabled=false", "features.sets.text.enabled=false"]


def _run(make_cfg, data, *overrides):
    from smart_product.heads import train_heads

    cfg = make_cfg(data, *overrides, HEAD, *OFF, "folds.k=3", "pseudo.rounds=0")
    return cfg, lambda: (make_features(cfg), train_heads(cfg)["fusion_cls"])


def _majority_f1(data) -> float:
    p = pd.read_parquet(Path(data) / "train.parquet").category_id.value_counts(normalize=True).max()
    return p * 2 * p / (1 + p)  # weighted F1 of always predicting the largest class


def test_fusion_keeps_the_fold_rule_and_reads_the_label_free_caches_once(demo_dir, make_cfg, permute_fold, tmp_path):
    """Permuting fold 2's labels leaves the lower-layer caches and fold 2's fusion vectors and
    probabilities byte-equal, while fold 0's change; the fused classifier is far above chance."""
    from test_features import _fold2_kept_fold0_changed

    cfg, run = _run(make_cfg, demo_dir, fusion_sets())
    make_folds(cfg)
    timings, m = run()
    assert list(timings)[-1] == "fusion"  # after the dense sets it reads
    assert m["overall"]["weighted_f1"] > 3 * _majority_f1(demo_dir)
    root = Path(cfg["out_dir"]) / "features"
    meta = json.loads((root / "fusion" / "fold2" / "meta.json").read_text())
    log = meta["fusion"]
    assert log["branches"] == ["photo", "text", "dense_tabular", "dense_tfidf", "shop"]
    assert log["history"][-1]["loss"] < log["history"][0]["loss"]
    assert meta["photo_lower_stages"] == 3 and meta["text_lower_layers"] == 1
    assert np.load(root / "fusion" / "fold2" / "train.npy").shape[1] == 5 * 32
    folds_csv = Path(cfg["out_dir"]) / "folds" / "folds.csv"
    data_b, fold_of, rows2 = permute_fold(folds_csv, 2)
    out_b = tmp_path / "b"
    cfg_b, run_b = _run(make_cfg, data_b, fusion_sets(), f"out_dir={out_b}")
    (out_b / "folds").mkdir(parents=True)
    (out_b / "folds" / "folds.csv").write_bytes(folds_csv.read_bytes())
    run_b()
    for cache in ("_maps", "_text"):  # one label-free cache each, the same bytes whatever the labels
        (a,) = (root / cache).iterdir()
        (b,) = (out_b / "features" / cache).iterdir()
        for f in a.iterdir():
            assert np.array_equal(np.load(f), np.load(b / f.name)), f
    _fold2_kept_fold0_changed(root / "fusion", out_b / "features" / "fusion")
    a, b = (np.load(Path(c["out_dir"]) / "oof" / "fusion_cls" / "oof.npy") for c in (cfg, cfg_b))
    assert np.array_equal(a[rows2], b[rows2])
    assert not np.allclose(a[fold_of == 0], b[fold_of == 0])


def _scribble(path: Path, rows: np.ndarray) -> None:
    """Random bytes into rows `rows` of a cache file (.npy or the raw .u8 photos)."""
    if path.suffix == ".npy":
        arr = np.load(path, mmap_mode="r+")
    else:
        arr = np.memmap(path, np.uint8, mode="r+")
        arr = arr.reshape(-1, *json.loads(path.with_suffix(".json").read_text())["shape"][1:])
    noise = np.random.default_rng(0).normal(size=(len(rows), *arr.shape[1:])) * 50
    arr[rows] = noise.astype(arr.dtype)
    arr.flush()


def _data_dropping_photos(demo_dir: Path, out: Path, every: int) -> Path:
    """The demo data with the photo of one row in `every` missing (every=1: no photos at all)."""
    import shutil

    out.mkdir()
    for split in ("train", "test"):
        shutil.copy(demo_dir / f"{split}.parquet", out / f"{split}.parquet")
        (out / "images" / split).mkdir(parents=True)
        ids = pd.read_parquet(demo_dir / f"{split}.parquet").product_id.to_numpy()
        for i, pid in enumerate(ids):
            src = demo_dir / "images" / split / f"{pid}.jpg"
            if i % every and src.is_file():
                (out / "images" / split / src.name).symlink_to(src)
    return out


@pytest.mark.parametrize("route", ["maps", "pixels"])
def test_a_row_without_a_photo_is_predicted_the_same_whatever_its_cache_slot_holds(demo_dir, make_cfg, tmp_path, route):
    """A row without a readable photo enters the fusion as the photo branch's absent vector: random
    bytes in its slot of the lower-map cache (or of the decoded photos, for the whole backbone)
    change nothing, neither its prediction nor any other row's."""
    data = _data_dropping_photos(demo_dir, tmp_path / "data", 7)
    train, test = (pd.read_parquet(data / f"{s}.parquet") for s in ("train", "test"))
    train["image_path"] = [None if i % 7 == 0 else 1 for i in range(len(train))]
    test["image_path"] = [None if i % 7 == 0 else 1 for i in range(len(test))]
    blocks = 2 if route == "maps" else "all"
    cfg, run = _run(make_cfg, data, fusion_sets(train_blocks=blocks, epochs=2), "folds.k=3")
    make_folds(cfg)
    run()
    root = Path(cfg["out_dir"]) / "features"
    before = {f: np.load(f) for f in sorted((root / "fusion").glob("fold*/*.npy"))}
    oof_before = np.load(Path(cfg["out_dir"]) / "oof" / "fusion_cls" / "oof.npy")
    for split, frame in (("train", train), ("test", test)):
        rows = np.flatnonzero(frame.image_path.isna().to_numpy())
        if route == "maps":
            (cache,) = (root / "_maps").iterdir()
            ok = np.load(cache / f"{split}.ok.npy")
            assert not ok[rows].any() and ok.sum() > len(ok) // 2
            _scribble(cache / f"{split}.maps.npy", rows)
        else:
            (cache,) = (root / "_images").iterdir()
            assert not np.load(cache / f"{split}.ok.npy")[rows].any()
            _scribble(cache / f"{split}.u8", rows)
    for meta in (root / "fusion").glob("fold*/meta.json"):
        meta.unlink()  # the folds retrain, reading the scribbled caches
    from smart_product.heads import train_heads

    make_features(cfg)
    train_heads(cfg, force=True)
    for f, a in before.items():
        assert np.array_equal(a, np.load(f)), f
    assert np.array_equal(oof_before, np.load(Path(cfg["out_dir"]) / "oof" / "fusion_cls" / "oof.npy"), equal_nan=True)


def test_the_model_reads_an_absent_vector_for_a_missing_branch_and_drops_branches_per_row():
    from smart_product.backbones.fusion import FusionModel, modality_drop

    torch.manual_seed(0)
    photo = torch.nn.Linear(4, 6)
    photo.dim = 6
    model = FusionModel(3, photo=photo, dense_dims={"t": 5}, n_shops=4, adapter=8, dropout=0.0).eval()
    assert model.branches == ["photo", "dense_t", "shop"] and model.dim == 24
    with torch.no_grad():
        model.absent["photo"].fill_(7.0)
    ok = torch.tensor([True, False, True])
    batch = {"n": 3, "photo": torch.randn(2, 4), "photo_ok": ok, "dense": {"t": torch.randn(3, 5)},
             "shop": torch.tensor([0, 1, 3])}  # fmt: skip
    vecs = model.vectors(batch)
    z, has = vecs["photo"]
    assert torch.equal(has, ok) and torch.equal(z[1], torch.zeros(8))
    fused = model.fuse(vecs)
    manual = torch.cat([torch.full((8,), 7.0), vecs["dense_t"][0][1], vecs["shop"][0][1]])
    expect = torch.nn.functional.gelu(model.norm(manual))
    torch.testing.assert_close(fused[1], expect)
    # dropping the photo of row 0 makes it read the absent vector too
    drop = torch.zeros(3, 3, dtype=torch.bool)
    drop[0, 0] = True
    dropped = model.fuse(vecs, drop)
    assert not torch.allclose(dropped[0], fused[0]) and torch.allclose(dropped[2], fused[2])
    model.train()
    logits, own = model(batch)
    assert logits.shape == (3, 3) and own["photo"][0].shape == (2, 3) and own["shop"][0].shape == (3, 3)
    d = modality_drop(10_000, 3, 0.5, torch.Generator().manual_seed(0))
    assert not d.all(1).any() and 0.35 < d.float().mean() < 0.4  # 3/8: all-dropped rows keep all
    assert modality_drop(5, 3, 0.0, torch.Generator()) is None and modality_drop(5, 1, 0.5, torch.Generator()) is None


def test_the_whole_backbone_route_trains_every_layer_on_a_cpu(demo_dir, make_cfg):
    """`train_blocks: all` and `train_layers: all` (gpu configs): the whole photo backbone over the
    decode-once pixels (augmented) and the whole text encoder over tokenised texts."""
    cfg, run = _run(make_cfg, demo_dir, fusion_sets(train_blocks="all", train_layers="all", epochs=2))
    make_folds(cfg)
    _, m = run()
    assert m["overall"]["weighted_f1"] > 2 * _majority_f1(demo_dir)
    root = Path(cfg["out_dir"]) / "features"
    assert not (root / "_maps").exists() and not (root / "_text").exists() and (root / "_images").exists()
    meta = json.loads((root / "fusion" / "fold0" / "meta.json").read_text())
    assert "photo_lower_stages" not in meta and "text_lower_layers" not in meta
    from smart_product.backbones import build_image_encoder, build_text_encoder

    n_image = sum(p.numel() for p in build_image_encoder("test_efficientnet", "random", 32).parameters())
    n_text = sum(p.numel() for p in build_text_encoder("tiny-random-bert").parameters())
    assert meta["fusion"]["trainable_params"] > n_image + n_text  # every layer trained


def test_a_catalogue_without_photos_trains_the_fusion_without_its_photo_branch(demo_dir, make_cfg, tmp_path):
    data = _data_dropping_photos(demo_dir, tmp_path / "data", 1)
    cfg, run = _run(make_cfg, data, fusion_sets(text="null"))
    make_folds(cfg)
    _, m = run()
    meta = json.loads((Path(cfg["out_dir"]) / "features" / "fusion" / "fold0" / "meta.json").read_text())
    assert meta["fusion"]["branches"] == ["dense_tabular", "dense_tfidf", "shop"]
    assert meta["fusion"]["batch_size"] == 512  # no backbone branch: dense_batch_size, not batch_size
    assert m["overall"]["weighted_f1"] > 2 * _majority_f1(data)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"colour": 1}, r"unknown keys \['colour'\]"),
        ({"image": "tfidf"}, r"'tfidf' is not an image set"),
        ({"dense": "[sparse]"}, r"'sparse' is sparse; give its SVD"),
        ({"dense": "[nothing]"}, r"'nothing' is not an enabled label-free set"),
        ({"train_blocks": "some"}, r"train_blocks: a number of top blocks or 'all'"),
        ({"image": "null", "text": "null", "dense": "[]", "shop": "false"}, r"no branch"),
    ],
)
def test_bad_fusion_options_are_config_errors_before_any_work(demo_dir, make_cfg, options, message):
    sets = fusion_sets(**options).replace("fusion: {", "sparse: {kind: tfidf_sparse}, fusion: {")
    cfg = make_cfg(demo_dir, sets, HEAD, "folds.k=3")
    make_folds(cfg)
    with pytest.raises(DataError, match=message):
        make_features(cfg)
    assert not (Path(cfg["out_dir"]) / "features" / "tabular").exists()


def test_the_fusion_trains_under_torchrun_on_two_cpu_processes(demo_dir, tmp_path):
    """DDP (gloo): each process trains on its half of every epoch; rank 0 writes fold 0's files."""
    import os
    import subprocess
    import sys

    from smart_product.config import load_config

    sets = fusion_sets(epochs=2)
    overrides = [f"out_dir={tmp_path}", "folds.k=3", sets, *OFF]
    make_folds(load_config(None, overrides, str(demo_dir)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "smart_product"]
    cmd += ["features", "--data", str(demo_dir), "--fold", "0", "-q", *overrides]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    meta = json.loads((tmp_path / "features" / "fusion" / "fold0" / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["fusion"]["world_size"] == 2
    assert meta["fusion"]["history"][-1]["loss"] < meta["fusion"]["history"][0]["loss"]
    assert np.load(tmp_path / "features" / "fusion" / "fold0" / "train.npy").shape == (2000, 5 * 32)
    assert not (tmp_path / "features" / "fusion" / "fold1").exists()  # FOLD=0 only
