"""A stratified part of a catalogue in the competition layout, its photos re-encoded small: a copy
that travels where the whole one does not (a remote GPU box, a size-limited upload).

    python benchmarks/catalogue_part.py --data ../shared/data/fashion --out /tmp/fashion-part \
        --frac 0.25 --max-side 128 --quality 90

Train rows: `frac` of each class, at least one row a class (so every test class still has
training rows); test rows: `frac` of each class of solution.csv. Photos: resized to at most
`max-side` pixels on the longer side (never enlarged) and saved as JPEG at `quality`; a photo that
does not open is left out, so the pipeline counts it as missing. Prints the part's size.
Scores on a part are not the whole catalogue's: say which part a figure comes from.
"""

from __future__ import annotations

import argparse
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
from PIL import Image

ID, TARGET = "product_id", "category_id"


def part(frame: pd.DataFrame, labels: pd.Series, frac: float, seed: int) -> pd.DataFrame:
    """`frac` of each label's rows (at least one), in the frame's order."""
    keep = (
        frame.assign(_y=labels.to_numpy())
        .groupby("_y", group_keys=False)
        .apply(lambda g: g.sample(max(1, round(len(g) * frac)), random_state=seed))
        .index
    )
    return frame.loc[sorted(keep)]


def reencode(task) -> bool:
    src, dst, max_side, quality = task
    try:
        with Image.open(src) as img:
            img = img.convert("RGB")
            img.thumbnail((max_side, max_side), Image.BILINEAR)  # never enlarges
            img.save(dst, quality=quality)
        return True
    except (OSError, ValueError):
        return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--frac", type=float, default=0.25)
    ap.add_argument("--max-side", type=int, default=128)
    ap.add_argument("--quality", type=int, default=90)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    src, out = Path(args.data), Path(args.out)
    train, test = pd.read_parquet(src / "train.parquet"), pd.read_parquet(src / "test.parquet")
    sol = pd.read_csv(src / "solution.csv")
    train = part(train, train[TARGET], args.frac, args.seed)
    sol_part = part(sol, sol[TARGET], args.frac, args.seed)
    test = test[test[ID].isin(sol_part[ID])]
    out.mkdir(parents=True, exist_ok=True)
    train.to_parquet(out / "train.parquet", index=False)
    test.to_parquet(out / "test.parquet", index=False)
    sol_part.to_csv(out / "solution.csv", index=False)
    tasks = []
    for split, frame in (("train", train), ("test", test)):
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        for pid in frame[ID]:
            p = src / "images" / split / f"{pid}.jpg"
            if p.is_file():
                tasks.append((p, out / "images" / split / f"{pid}.jpg", args.max_side, args.quality))
    with ProcessPoolExecutor() as pool:
        ok = sum(pool.map(reencode, tasks, chunksize=64))
    if (src / "README.md").is_file():
        shutil.copy(src / "README.md", out / "README.md")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(
        f"{out}: {len(train)} train / {len(test)} test rows, {train[TARGET].nunique()} classes; "
        f"{ok} of {len(tasks)} photos re-encoded at <= {args.max_side} px; {size / 2**20:.1f} MiB"
    )


if __name__ == "__main__":
    main()
