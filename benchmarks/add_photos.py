"""Give a catalogue a photo per row, the competition's way: a 512x512 JPEG for every train and test
product, to time and size the image path at the competition's scale (ozon has its rows, no photos).

    python benchmarks/add_photos.py --data ../shared/data/ozon --out runs/ozon-photos --size 512

DIR gets train.parquet, test.parquet and solution.csv as symbolic links to DATA's (not copies), and
images/{train,test}/{product_id}.jpg. The photos:
- are deterministic (the seed and the product id) and unique per row (per-row pixel noise);
- carry the class the way the demo's do: a shape, a colour and a texture per category, the
  position, size, rotation, background and blur varying per row; test rows take their class from
  DATA's solution.csv (the pipeline never reads it, only this generator);
- look like photos to a JPEG coder: a soft shaded background, grain, quality 90, so they weigh
  30-80 KB at 512 px like real product photos, not the few KB of flat shapes;
- share a base shot within a listing (rows of one shop with the same title): the same scene, another
  background shade and grain, so the near-duplicate audit's pHash has real pairs to find;
- about `--broken` of them (0.1%, at least one of each kind) are odd the ways real uploads are:
  truncated JPEG, a 0-byte file, PNG bytes named .jpg, CMYK, grayscale, EXIF-rotated, a 6000x6000
  photo, a missing file, a 16-bit grayscale PNG. DIR/photos_odd.csv lists each with its kind.
Files are written to a temporary name and renamed, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import colorsys
import hashlib
import io
import json
import math
import os
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import pandas as pd

from smart_product.demo import SHAPES, TEXTURES, draw_shape

ODD_KINDS = ("truncated", "empty", "png_named_jpg", "cmyk", "grayscale", "exif_rotated", "huge", "missing", "png16")
HUGE = 6000


def class_look(index: int) -> dict:
    """A category's shape, colour and texture: 10 shapes x 3 textures x hue and shade steps, so
    classes next to each other in the list differ in shape first."""
    hue = (index // 30) * 0.618034 % 1.0
    sat = 0.55 + 0.4 * ((index // 7) % 3) / 2
    val = 0.55 + 0.4 * ((index // 11) % 2)
    rgb = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, sat, val))
    return {"shape": SHAPES[index % 10], "texture": TEXTURES[(index // 10) % 3], "rgb": rgb}


def _rng(*parts) -> np.random.Generator:
    digest = hashlib.sha1("/".join(map(str, parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def shot(look: dict, listing_key: str, seed: int) -> dict:
    """A listing's base shot: everything about the scene its rows share."""
    rng = _rng(seed, "listing", listing_key)
    return {
        **look,
        "col": tuple(int(np.clip(c + rng.normal(0, 20), 0, 255)) for c in look["rgb"]),
        "bg": tuple(int(v) for v in rng.integers(185, 245, 3)),
        "r": rng.uniform(0.2, 0.33),
        "cx": 0.5 + rng.uniform(-0.1, 0.1),
        "cy": 0.5 + rng.uniform(-0.1, 0.1),
        "rot": rng.uniform(0, 2 * math.pi),
        "blur": rng.uniform(0.3, 1.5),
        "light": rng.uniform(-0.5, 0.5, 2),
    }


def draw(scene: dict, size: int, rng: np.random.Generator):
    """One photo of a scene: this row's background shade, shape shade and grain."""
    from PIL import Image, ImageDraw, ImageFilter

    bg = tuple(int(np.clip(v + rng.normal(0, 8), 0, 255)) for v in scene["bg"])
    col = tuple(int(np.clip(v + rng.normal(0, 10), 0, 255)) for v in scene["col"])
    r, cx, cy, rot = scene["r"] * size, scene["cx"] * size, scene["cy"] * size, scene["rot"]
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)

    draw_shape(d, scene["shape"], cx, cy, r, rot, col)  # the demo's shapes
    step = max(4, size // 12)
    if scene["texture"] == "stripes":
        for x in range(0, 2 * size, step):
            d.line([(x, 0), (x - size, size)], fill=bg, width=max(2, size // 48))
    elif scene["texture"] == "dots":
        for x in range(step // 2, size, step):
            for y in range(step // 2, size, step):
                d.ellipse([x - step / 6, y - step / 6, x + step / 6, y + step / 6], fill=bg)
    img = img.filter(ImageFilter.GaussianBlur(scene["blur"] * size / 256))
    arr = np.array(img, dtype=np.float32)
    # studio light: a soft gradient; cloth-like texture: smooth noise at 1/16 scale; sensor grain
    ramp = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    light = 1.0 + 0.25 * (scene["light"][0] * ramp[None, :] + scene["light"][1] * ramp[:, None])
    low = rng.standard_normal((size // 16 + 1, size // 16 + 1), dtype=np.float32)
    low = np.asarray(Image.fromarray(low).resize((size, size), Image.BICUBIC))
    arr *= light[..., None]
    arr += (9.0 * low)[..., None]
    arr += 4.0 * rng.standard_normal(arr.shape, dtype=np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def odd_bytes(kind: str, img, quality: int, rng: np.random.Generator) -> bytes | None:
    """The file of an odd upload (None: no file at all)."""
    from PIL import Image

    buf = io.BytesIO()
    if kind == "missing":
        return None
    if kind == "empty":
        return b""
    if kind == "truncated":
        img.save(buf, "JPEG", quality=quality)
        data = buf.getvalue()
        return data[: len(data) // 3]
    if kind == "png_named_jpg":
        img.save(buf, "PNG")
    elif kind == "cmyk":
        img.convert("CMYK").save(buf, "JPEG", quality=quality)
    elif kind == "grayscale":
        img.convert("L").save(buf, "JPEG", quality=quality)
    elif kind == "exif_rotated":  # pixels stored turned, the EXIF orientation (6) turns them back
        exif = Image.Exif()
        exif[0x0112] = 6
        img.transpose(Image.Transpose.ROTATE_90).save(buf, "JPEG", quality=quality, exif=exif)
    elif kind == "huge":
        big = img.resize((HUGE, HUGE), Image.BILINEAR)
        arr = np.asarray(big, dtype=np.int16) + rng.integers(-3, 4, (HUGE, HUGE, 1), dtype=np.int16)
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
    elif kind == "png16":
        gray = np.asarray(img.convert("L"), dtype=np.uint16) * 257
        Image.fromarray(gray).save(buf, "PNG")  # mode I;16
    else:
        raise ValueError(f"unknown odd kind {kind!r}")
    return buf.getvalue()


def _write(path: Path, data: bytes | None) -> int:
    if data is None:
        return 0
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return len(data)


def _job(task) -> tuple[int, int, str]:
    """One row: (product_id, bytes written, kind)."""
    pid, split, look, key, kind, size, quality, seed, folder = task
    path = Path(folder) / split / f"{pid}.jpg"
    if kind != "missing" and path.exists():  # written by an earlier, interrupted run
        return pid, path.stat().st_size, kind
    rng = _rng(seed, "row", split, pid)
    img = draw(shot(look, key, seed), size, rng)
    if kind == "ok":
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=quality)
        return pid, _write(path, buf.getvalue()), kind
    return pid, _write(path, odd_bytes(kind, img, quality, rng)), kind


def plan(data: Path, seed: int, broken: float) -> pd.DataFrame:
    """product_id, split, class index, listing key and kind ('ok' or an odd kind) of every row."""
    from smart_product.data import ID, TARGET, load_split

    train = load_split(data, "train")
    test = load_split(data, "test")
    sol = pd.read_csv(data / "solution.csv")
    test = test.merge(sol[[ID, TARGET]], on=ID, how="left")
    if test[TARGET].isna().any():
        raise SystemExit(f"{data / 'solution.csv'}: no class for {int(test[TARGET].isna().sum())} test rows")
    rows = pd.concat([train.assign(split="train"), test.assign(split="test")], ignore_index=True)
    classes = np.sort(rows[TARGET].unique())
    rows["cls"] = np.searchsorted(classes, rows[TARGET])
    rows["key"] = rows["shop_id"].astype(str) + "|" + rows["title"].str.lower().str.strip()
    rows.loc[rows["title"].str.strip() == "", "key"] = "row|" + rows[ID].astype(str)
    n_odd = max(len(ODD_KINDS), int(round(broken * len(rows))))
    pick = _rng(seed, "odd").permutation(len(rows))[:n_odd]
    rows["kind"] = "ok"
    rows.loc[rows.index[pick], "kind"] = [ODD_KINDS[i % len(ODD_KINDS)] for i in range(n_odd)]
    return rows[[ID, "split", "cls", "key", "kind"]]


def link(src: Path, dst: Path) -> None:
    if dst.is_symlink() or dst.exists():
        if dst.resolve() == src.resolve():
            return
        raise SystemExit(f"{dst} exists and is not a link to {src}")
    dst.symlink_to(src.resolve())


def main(argv=None) -> dict:
    from tqdm import tqdm

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="a catalogue in the competition layout, with solution.csv")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--quality", type=int, default=90)
    ap.add_argument("--broken", type=float, default=0.001, help="share of odd uploads (at least one of each kind)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--limit", type=int, default=None, help="only the first N rows' photos (a quick look)")
    args = ap.parse_args(argv)
    t0 = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in ("train.parquet", "test.parquet", "solution.csv"):
        link(args.data / name, args.out / name)
    rows = plan(args.data, args.seed, args.broken)
    looks = [class_look(i) for i in range(int(rows["cls"].max()) + 1)]
    for split in ("train", "test"):
        (args.out / "images" / split).mkdir(parents=True, exist_ok=True)
    rows[rows["kind"] != "ok"].drop(columns=["cls", "key"]).to_csv(args.out / "photos_odd.csv", index=False)
    todo = rows if args.limit is None else rows.iloc[: args.limit]
    tasks = [
        (
            int(r.product_id),
            r.split,
            looks[r.cls],
            r.key,
            r.kind,
            args.size,
            args.quality,
            args.seed,
            str(args.out / "images"),
        )
        for r in todo.itertuples()
    ]
    sizes = []
    pool = Pool(args.workers) if args.workers > 1 else None
    jobs = pool.imap_unordered(_job, tasks, chunksize=64) if pool else map(_job, tasks)
    for _, n, kind in tqdm(jobs, total=len(tasks), desc="photos"):
        if kind == "ok":
            sizes.append(n)
    if pool:
        pool.close()
        pool.join()
    sizes = np.array(sizes)
    out = {
        "rows": len(todo),
        "odd": rows.loc[todo.index, "kind"].value_counts().drop("ok", errors="ignore").to_dict(),
        "kb_mean": round(float(sizes.mean()) / 1024, 1) if len(sizes) else None,
        "kb_p5_p95": [round(float(np.percentile(sizes, q)) / 1024, 1) for q in (5, 95)] if len(sizes) else None,
        "disk_gb": round(sum(f.stat().st_size for f in (args.out / "images").rglob("*.jpg")) / 1e9, 2),
        "seconds": round(time.time() - t0, 1),
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
