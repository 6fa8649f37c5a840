"""`CONFIG=auto` (the default of `make`): one of the shipped configs, picked from the data and the machine.

What it reads: the train rows and classes, the share of train and test rows with a photo at
images/{split}/{product_id}.jpg, the titles' script (Cyrillic or Latin, from up to 2,000 titles);
whether CUDA is present, the cores and the memory. The rule (README, "Configs"):

    CUDA, > 5,000 rows or > 200 classes     gpu-xl              the class-scalable heads, CatBoost on the GPU
    CUDA, photos and Cyrillic titles        gpu-offline-fusion  gpu-offline and the fusion head
    CUDA, otherwise                         gpu-offline         both offline backbones fine-tuned per fold
    CPU,  > 5,000 rows or > 200 classes     cpu-xl              the class-scalable heads (ozon: 25.7 min)
    CPU,  photos and Cyrillic titles        cpu                 the photo and text learned together (the fusion head)
    CPU,  otherwise                         cpu-large           TF-IDF liblinear heads, frozen backbones

Why the script matters on a small catalogue: the offline text encoder is English, so on Cyrillic
titles the photo carries what it cannot, and the fusion head lifts the demo's stacker by +0.020;
on English titles with photos (the held-out catalogue of docs/results.md, 2026-12-07) the same
head lowered the blend's test score, and the TF-IDF heads of cpu-large are the stronger choice. The
fusion head is on only there, on CPU and on CUDA alike: where unseen products (a pseudo-test split
or a held-out catalogue) say the blend gains from it.

The estimate of time and peak memory follows the rows between the measured runs in COSTS (2 cores
with native bf16; a CPU without it runs the backbones in float32: FLOAT32_FACTOR, measured on the demo).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CYRILLIC, LATIN = re.compile("[\u0400-\u04ff]"), re.compile("[A-Za-z]")
SMALL_ROWS, SMALL_CLASSES, PHOTO_SHARE = 5000, 200, 0.5


@dataclass(frozen=True)
class Cost:
    """A config's measured runs (`make all` from an empty folder, 2 cores with native bf16 unless
    said): (train rows in thousands, seconds without the photos' part, peak GiB). Between two runs
    the estimate is interpolated, beyond them extrapolated along the nearest two; one run gives a
    line through (0 rows, 60 s, 1 GiB). Photos add `s_photo` seconds per 1,000 rows with one (train
    and test). `float32`: the part that runs FLOAT32_FACTOR slower without native bf16 ("all" or
    "photos")."""

    runs: tuple
    s_photo: float
    float32: str
    measured: str


COSTS = {  # docs/results.md, "CONFIG=auto on four catalogues" (2026-12-07) and the entries it names
    "cpu": Cost(((2.0, 709, 2.52),), 0, "all", "the demo, 2,000 rows: 11.8 min, 2.52 GiB"),
    "cpu-large": Cost(
        ((0.843, 150, 1.67), (8.9, 1740, 2.53)),
        0,
        "all",
        "flipkart, 843 rows: 2.5 min, 1.67 GiB; a fashion part, 8,900 rows: 29 min, 2.53 GiB (2026-12-03)",
    ),
    "cpu-xl": Cost(
        ((0.635, 71, 1.64), (35.556, 1022, 3.96), (90.951, 1540, 6.14)),
        7.4,
        "photos",
        "a 635-row fixture: 77 s, 1.64 GiB; fashion, 35,556 rows: 22.5 min, 3.96 GiB; ozon, 90,951 rows: 25.7 min, "
        "6.14 GiB; photos: ozon with a 512 px photo a row, +13.2 min for 107k photos (2026-12-06)",
    ),
    "gpu-xl": Cost(((90.951, 330, 6.14),), 1.0, "all", "cpu-xl's heads on ozon on one H100: ~5.5 min (2026-11-27)"),
    "gpu-offline": Cost(((0.843, 600, 0.92),), 0, "all", "flipkart on one H100: ~10 min, 0.92 GiB (2026-11-26)"),
    "gpu-offline-fusion": Cost(
        ((0.843, 600, 0.92),), 0, "all", "gpu-offline's run (flipkart on one H100, 2026-11-26); the fusion head untimed"
    ),
}
FLOAT32_FACTOR = 1.47  # the demo held to AVX2 without bf16: 1,041 s against 709 s on the same host (2026-12-07)


def _along(runs, x: float, at: int, origin: float) -> float:
    """Column `at` of `runs` at x thousand rows: piecewise linear, extrapolated along the nearest two."""
    pts = sorted((r[0], r[at]) for r in runs)
    if len(pts) == 1:
        pts = [(0.0, origin), pts[0]]
    i = min(max(1, sum(px <= x for px, _ in pts)), len(pts) - 1)
    (x0, y0), (x1, y1) = pts[i - 1], pts[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


@dataclass
class DataStats:
    rows: int
    test_rows: int
    classes: int
    photo_share: float  # of train and test rows together
    script: str  # "cyrillic" | "latin" | "none"

    @property
    def photos(self) -> int:
        return round(self.photo_share * (self.rows + self.test_rows))


@dataclass
class Machine:
    cuda: bool
    cores: int
    mem_gib: float
    bf16: bool


@dataclass
class Choice:
    name: str
    reason: str
    seconds: float
    gib: float

    def line(self, stats: DataStats, machine: Machine) -> str:
        where = "one GPU" if machine.cuda else f"{machine.cores} cores"
        warn = (
            f"; WARNING: over this machine's {machine.mem_gib:.0f} GiB"
            if self.gib > 0.9 * machine.mem_gib and machine.mem_gib
            else ""
        )
        return (
            f"CONFIG=auto picked configs/{self.name}.yaml ({self.reason}): "
            f"{stats.rows:,} train rows, {stats.classes} classes, photos for {stats.photo_share:.0%} of rows, "
            f"{stats.script} titles; {'CUDA' if machine.cuda else 'no GPU'}, {machine.cores} cores, "
            f"{machine.mem_gib:.0f} GiB; estimate ~{self.seconds / 60:.0f} min on {where}, peak ~{self.gib:.1f} GiB"
            f"{warn} (CONFIG=path picks another)"
        )


def _script(titles) -> str:
    text = " ".join(titles)
    cyr, lat = len(CYRILLIC.findall(text)), len(LATIN.findall(text))
    if cyr + lat == 0:
        return "none"
    return "cyrillic" if cyr >= lat else "latin"


def data_stats(data_dir) -> DataStats:
    """Rows, classes, photo share and the titles' script of a data directory (validated as every stage does)."""
    import pandas as pd

    from .data import TARGET, load_split, parse_text_fields

    train = load_split(data_dir, "train", parse_text=False)
    test = load_split(data_dir, "test", parse_text=False)
    raw = pd.read_parquet(Path(data_dir) / "train.parquet", columns=["text_fields"])["text_fields"]
    sample = raw.sample(min(len(raw), 2000), random_state=0) if len(raw) else raw
    titles = []
    for t in sample.dropna():  # the loader's own parse; a row it would reject is left out of the sample
        try:
            titles.append(parse_text_fields(t)["title"])
        except (TypeError, ValueError):
            continue
    photos = int(train["has_image"].sum() + test["has_image"].sum())
    return DataStats(
        rows=len(train),
        test_rows=len(test),
        classes=int(train[TARGET].nunique()),
        photo_share=photos / max(1, len(train) + len(test)),
        script=_script(titles),
    )


def this_machine() -> Machine:
    from .backbones.hardware import cpu_bf16_native

    try:
        import torch

        cuda = bool(torch.cuda.is_available())
    except ImportError:  # pragma: no cover - torch is a requirement
        cuda = False
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        mem = 0.0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return Machine(cuda=cuda, cores=cores, mem_gib=mem, bf16=cpu_bf16_native())


def estimate(name: str, stats: DataStats, machine: Machine) -> tuple[float, float]:
    """(seconds, peak GiB) of a shipped config on this data and machine, from its measured runs (COSTS)."""
    c = COSTS[name]
    rows = stats.rows / 1000
    text_s, photo_s = _along(c.runs, rows, 1, 60.0), c.s_photo * stats.photos / 1000
    if not machine.cuda and not machine.bf16:  # the backbones in float32
        text_s *= FLOAT32_FACTOR if c.float32 == "all" else 1.0
        photo_s *= FLOAT32_FACTOR
    return max(60.0, text_s + photo_s), max(1.0, _along(c.runs, rows, 2, 1.0))


def choose(stats: DataStats, machine: Machine) -> Choice:
    """The rule of this module's docstring."""
    big = stats.rows > SMALL_ROWS or stats.classes > SMALL_CLASSES
    size = f"over {SMALL_ROWS:,} rows or {SMALL_CLASSES} classes" if big else "a small catalogue"
    fusion = stats.photo_share >= PHOTO_SHARE and stats.script == "cyrillic"
    if machine.cuda:
        name = "gpu-xl" if big else "gpu-offline-fusion" if fusion else "gpu-offline"
        why = f"CUDA, {size}" + (" with photos and Cyrillic titles: the fusion head" if name.endswith("fusion") else "")
    elif big:
        name, why = "cpu-xl", f"{size}: the heads that scale with classes"
    elif fusion:
        name, why = "cpu", "a small catalogue with photos and Cyrillic titles: the fusion of photo and text"
    else:
        photo = "no photos" if stats.photo_share < PHOTO_SHARE else f"{stats.script} titles"
        name, why = "cpu-large", f"a small catalogue with {photo}: TF-IDF heads, frozen backbones"
    seconds, gib = estimate(name, stats, machine)
    return Choice(name, why, seconds, gib)


def auto_config(data_dir) -> Choice:
    """Pick, log the one line, return the choice."""
    stats, machine = data_stats(data_dir), this_machine()
    choice = choose(stats, machine)
    log.info("%s", choice.line(stats, machine))
    return choice
