"""Stage `data`: read the competition layout into one tidy frame per split, validating as we go.

Layout (the KazanExpress 2023 task; see README):

    DATA/train.parquet   product_id, category_id, [category_name], sale, shop_id, shop_title,
                         rating, text_fields (JSON)
    DATA/test.parquet    the same without category_id / category_name
    DATA/images/{train,test}/{product_id}.jpg

`load_split` returns a frame with one row per product:

    product_id, [category_id], shop_id, shop_title, rating, sale, title, description (clean text),
    attributes (list[str]), attributes_text, {dict}_text ("key: value; ...") and {dict}_keys
    (list[str]) for the three dict fields, image_path (str or None), has_image (bool)

Problems with the data raise `DataError` whose message has one line per problem naming the
file, column and product id. Image problems are not fatal: see `check_images`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

DICT_FIELDS = ("custom_characteristics", "defined_characteristics", "filters")
TEXT_KEYS = ("title", "description")
TARGET = "category_id"
ID = "product_id"

# column -> (kind, required in train, required in test); kinds are checked by `_check_dtypes`
COLUMNS = {
    ID: ("int", True, True),
    TARGET: ("label", True, False),  # int ids, or str (classes named as the catalogue names them)
    "shop_id": ("int", True, True),
    "shop_title": ("str", True, True),
    "rating": ("float", True, True),
    "sale": ("bool", True, True),
    "text_fields": ("str", True, True),
}
MAX_LINES_PER_PROBLEM = 10


class DataError(ValueError):
    """Input data that cannot be used; the message has one line per problem."""


class _Problems:
    """Collects problems as `file: column: product_id=...: message` lines."""

    def __init__(self):
        self.lines: list[str] = []
        self.counts: dict[str, int] = {}

    def add(self, kind: str, line: str) -> None:
        n = self.counts.get(kind, 0) + 1
        self.counts[kind] = n
        if n <= MAX_LINES_PER_PROBLEM:
            self.lines.append(line)
        elif n == MAX_LINES_PER_PROBLEM + 1:
            self.lines.append(f"... more '{kind}' problems follow (see total below)")

    def raise_if_any(self) -> None:
        if self.lines:
            totals = ", ".join(f"{k}: {v}" for k, v in self.counts.items())
            raise DataError("\n".join(self.lines + [f"totals: {totals}"]))


# ---------------------------------------------------------------- text cleaning


class _TextExtractor(HTMLParser):
    BLOCK = {
        "p",
        "br",
        "div",
        "li",
        "ul",
        "ol",
        "tr",
        "td",
        "th",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "table",
        "section",
        "article",
    }

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in self.BLOCK:
            self.parts.append(" ")

    def handle_endtag(self, tag):
        if tag in ("script", "style") and self._skip:
            self._skip -= 1
        elif tag in self.BLOCK:
            self.parts.append(" ")

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


_WS = re.compile(r"\s+")


def clean_text(raw: str | None) -> str:
    """HTML tags stripped, entities decoded, whitespace normalised."""
    if not raw:
        return ""
    if "<" in raw and ">" in raw:
        parser = _TextExtractor()
        parser.feed(raw)
        parser.close()
        raw = "".join(parser.parts)
    return _WS.sub(" ", unescape(raw).replace("\xa0", " ")).strip()


# ---------------------------------------------------------------- text_fields JSON


def _str_list(value, where: str) -> list[str]:
    """A list of strings (numbers are accepted and written as text); None -> []."""
    if value is None:
        return []
    if isinstance(value, str):
        raise TypeError(f"{where}: expected a list of strings, got a string")
    if not isinstance(value, list):
        raise TypeError(f"{where}: expected a list of strings, got {type(value).__name__}")
    out = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            raise TypeError(f"{where}: list items must be strings, got {type(item).__name__}")
        out.append(str(item).strip())
    return [s for s in out if s]


def parse_text_fields(raw: str) -> dict:
    """Parse one `text_fields` JSON string into clean parts. Raises ValueError/TypeError."""
    obj = json.loads(raw)
    if not isinstance(obj, dict):
        raise TypeError(f"expected a JSON object, got {type(obj).__name__}")
    out: dict = {}
    for key in TEXT_KEYS:
        value = obj.get(key)
        if value is not None and not isinstance(value, str):
            raise TypeError(f"'{key}': expected a string, got {type(value).__name__}")
        out[key] = clean_text(value)
    out["attributes"] = [clean_text(a) for a in _str_list(obj.get("attributes"), "'attributes'")]
    out["attributes_text"] = "; ".join(out["attributes"])
    for field in DICT_FIELDS:
        value = obj.get(field)
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise TypeError(f"'{field}': expected an object, got {type(value).__name__}")
        pairs = []
        for k, v in value.items():
            vals = [v] if isinstance(v, str) else _str_list(v, f"'{field}.{k}'")
            pairs.append((clean_text(str(k)), [clean_text(x) for x in vals]))
        out[f"{field}_keys"] = [k for k, _ in pairs]
        out[f"{field}_text"] = "; ".join(f"{k}: {', '.join(vs)}" for k, vs in pairs)
    return out


# ---------------------------------------------------------------- validation


def _is_kind(series: pd.Series, kind: str) -> bool:
    dtype = series.dtype
    if kind == "int":
        return pd.api.types.is_integer_dtype(dtype)
    if kind == "float":
        return pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
    if kind == "bool":
        if pd.api.types.is_bool_dtype(dtype):
            return True
        return pd.api.types.is_integer_dtype(dtype) and set(series.dropna().unique()) <= {0, 1}
    if kind == "str":
        return pd.api.types.is_string_dtype(dtype) or pd.api.types.is_object_dtype(dtype)
    if kind == "label":  # int, or text: every value a str
        return pd.api.types.is_integer_dtype(dtype) or (
            _is_kind(series, "str") and series.dropna().map(lambda v: isinstance(v, str)).all()
        )
    raise ValueError(kind)


def label_array(values) -> np.ndarray:
    """Category ids as the catalogue gives them: int64, or str (numpy unicode, never an object
    array, so classes.npy loads without pickle)."""
    a = np.asarray(values)
    return a.astype(np.int64) if a.dtype.kind in "iub" else a.astype(str)


def read_labels(path, classes=None) -> pd.DataFrame:
    """A CSV of product_id, category_id (solution.csv, a submission) with the ids as written: read
    as text, then as int64 when `classes` (the train split's) are ints, or text when they are not
    ("007" stays "007"); classes None: int64 where every value is an integer."""
    df = pd.read_csv(path, dtype={TARGET: str})
    if TARGET in df.columns:
        v = df[TARGET]
        as_int = (
            np.asarray(classes).dtype.kind in "iu"
            if classes is not None
            else bool(v.dropna().str.fullmatch(r"-?\d+").all())
        )
        df[TARGET] = label_array(v.astype("int64")) if as_int and v.notna().all() else v
    return df


def _read_parquet(path: Path, split: str, problems: _Problems) -> pd.DataFrame | None:
    if not path.is_file():
        problems.add("missing file", f"{path}: missing file (expected the {split} split here)")
        return None
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for broken files
        problems.add("unreadable file", f"{path}: cannot read parquet ({exc})")
        return None


def _check_frame(df: pd.DataFrame, path: Path, split: str, problems: _Problems) -> bool:
    """Column presence, dtypes, targets and ids; returns False if the frame is unusable."""
    usable = True
    if len(df) == 0:
        problems.add("no rows", f"{path}: no rows (the {split} split needs at least one product)")
        usable = False
    for col, (kind, in_train, in_test) in COLUMNS.items():
        required = in_train if split == "train" else in_test
        if col not in df.columns:
            if required:
                problems.add("missing column", f"{path}: column '{col}': missing column")
                usable = False
            continue
        if col == TARGET and df[col].isna().any():
            ids = df.loc[df[col].isna(), ID] if ID in df else pd.Series(["?"])
            for pid in ids.head(MAX_LINES_PER_PROBLEM + 1):
                problems.add("missing target", f"{path}: column '{col}': product_id={pid}: missing target")
            usable = False
            continue
        if col in ("shop_title", "rating", "text_fields"):
            pass  # nulls allowed (unknown brand / rating; no text: counted and logged by _parse_all)
        elif df[col].isna().any():
            bad = df.loc[df[col].isna(), ID].head(3).tolist() if ID in df else []
            problems.add("null value", f"{path}: column '{col}': null values (product_id={bad}...)")
            usable = False
            continue
        if not _is_kind(df[col], kind):
            want = "int or str" if kind == "label" else kind
            problems.add("wrong dtype", f"{path}: column '{col}': wrong dtype {df[col].dtype} (expected {want})")
            usable = False
    if ID in df.columns and _is_kind(df[ID], "int"):
        dup = df.loc[df[ID].duplicated(keep=False), ID].unique()
        for pid in dup:
            problems.add("duplicate product_id", f"{path}: column '{ID}': product_id={pid}: duplicate product_id")
        usable = usable and len(dup) == 0
    return usable


def _parse_all(df: pd.DataFrame, path: Path, problems: _Problems) -> pd.DataFrame:
    rows, ok, empty = [], True, []
    for pid, raw in zip(df[ID].to_numpy(), df["text_fields"].to_numpy()):
        if raw is None or (isinstance(raw, float) and np.isnan(raw)) or (isinstance(raw, str) and not raw.strip()):
            empty.append(pid)  # a null or empty text_fields: a product with no text, not an error
            raw = "{}"
        try:
            rows.append(parse_text_fields(raw))
        except json.JSONDecodeError as exc:
            problems.add(
                "text_fields not JSON",
                f"{path}: column 'text_fields': product_id={pid}: not valid JSON ({exc.msg} at char {exc.pos})",
            )
            ok = False
        except (TypeError, ValueError) as exc:
            problems.add("text_fields bad structure", f"{path}: column 'text_fields': product_id={pid}: {exc}")
            ok = False
    if empty:
        log.warning(
            "%s: column 'text_fields': %d null or empty values read as a product with no text (product_id=%s%s)",
            path,
            len(empty),
            [int(p) for p in empty[:3]],
            "..." if len(empty) > 3 else "",
        )
    return pd.DataFrame(rows, index=df.index) if ok else pd.DataFrame()


def image_path(data_dir: Path, split: str, pid) -> Path:
    return Path(data_dir) / "images" / split / f"{pid}.jpg"


def load_split(data_dir: str | Path, split: str, parse_text: bool = True) -> pd.DataFrame:
    """Read and validate one split. `parse_text=False` skips the JSON parse (fold assignment)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    data_dir = Path(data_dir)
    path = data_dir / f"{split}.parquet"
    problems = _Problems()
    df = _read_parquet(path, split, problems)
    parsed = None
    if df is not None and _check_frame(df, path, split, problems):
        parsed = _parse_all(df, path, problems) if parse_text else None
    problems.raise_if_any()
    out = pd.DataFrame(
        {
            ID: df[ID].astype("int64").to_numpy(),
            "shop_id": df["shop_id"].astype("int64").to_numpy(),
            "shop_title": df["shop_title"].fillna("").astype(str).map(clean_text).to_numpy(),
            "rating": df["rating"].astype("float64").to_numpy(),
            "sale": df["sale"].astype(bool).to_numpy(),
        }
    )
    if split == "train":
        out.insert(1, TARGET, label_array(df[TARGET]))
        if "category_name" in df.columns:
            out["category_name"] = df["category_name"].to_numpy()
    if parsed is not None:
        for col in parsed.columns:
            out[col] = parsed[col].to_numpy()
    paths = [image_path(data_dir, split, pid) for pid in out[ID]]
    exists = np.fromiter((p.is_file() for p in paths), bool, len(paths))
    out["image_path"] = [str(p) if e else None for p, e in zip(paths, exists)]
    out["has_image"] = exists
    return out


def load_data(data_dir: str | Path, parse_text: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both splits, validated together (ids must not appear in both)."""
    train = load_split(data_dir, "train", parse_text)
    test = load_split(data_dir, "test", parse_text)
    both = np.intersect1d(train[ID].to_numpy(), test[ID].to_numpy())
    if len(both):
        problems = _Problems()
        for pid in both:
            problems.add(
                "id in train and test",
                f"{Path(data_dir) / 'test.parquet'}: column '{ID}': product_id={pid}: also in train.parquet",
            )
        problems.raise_if_any()
    log.info(
        "loaded %s: train %d rows, %d classes; test %d rows", data_dir, len(train), train[TARGET].nunique(), len(test)
    )
    return train, test


# ---------------------------------------------------------------- images


def _image_status(path: str | None, deep: bool) -> str:
    from PIL import Image  # imported here: most stages never open images

    if path is None or pd.isna(path):
        return "missing"
    try:
        with Image.open(path) as img:
            if deep:
                img.load()
            else:
                img.verify()
                if img.format == "JPEG" and not _ends_a_jpeg(path):
                    return "corrupt"  # truncated: verify() reads the headers only; decoding would fail
    except Exception:
        return "corrupt"
    return "ok"


def _ends_a_jpeg(path) -> bool:
    """Whether the file's last KB holds the JPEG end-of-image marker (an upload cut short lacks it)."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 1024))
        return b"\xff\xd9" in f.read()


def check_images(frame: pd.DataFrame, deep: bool = False, workers: int = 8) -> pd.DataFrame:
    """Open every image: returns product_id, image_path, status (ok / missing / corrupt).

    `deep=False` checks the file structure (`PIL.Image.verify`, fast); `deep=True` decodes the
    pixels. Use the result to clear `has_image` on broken rows (`apply_image_status`).
    """
    with ThreadPoolExecutor(workers) as pool:
        status = list(pool.map(lambda p: _image_status(p, deep), frame["image_path"]))
    return pd.DataFrame({ID: frame[ID].to_numpy(), "image_path": frame["image_path"].to_numpy(), "status": status})


def apply_image_status(frame: pd.DataFrame, status: pd.DataFrame, split: str) -> pd.DataFrame:
    """Set has_image=False (and image_path=None) where the image is missing or corrupt; log counts."""
    bad = status["status"].to_numpy() != "ok"
    frame = frame.copy()
    frame.loc[bad, "has_image"] = False
    frame.loc[bad, "image_path"] = None
    counts = status["status"].value_counts().to_dict()
    if bad.any():
        log.warning(
            "%s images: %d missing, %d corrupt of %d; those rows get has_image=False",
            split,
            counts.get("missing", 0),
            counts.get("corrupt", 0),
            len(frame),
        )
    return frame


PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
MIN_PHOTO_SHARE = 0.5  # below this in train or test, photos are taken as misplaced, not as absent


def _photo_files(folder: Path, depth: int = 2, limit: int = 100_000):
    """(count, first) of photo files under `folder`, `depth` levels down (at most `limit` counted)."""
    n, first, stack = 0, None, [(folder, 0)]
    while stack and n < limit:
        d, level = stack.pop()
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError:
            continue
        for e in entries:
            if e.is_dir() and level < depth:
                stack.append((Path(e.path), level + 1))
            elif e.is_file() and Path(e.name).suffix.lower() in PHOTO_SUFFIXES:
                n, first = n + 1, first or e.path
    return n, first


def check_photos(data_dir, train: pd.DataFrame, test: pd.DataFrame, images: str = "auto") -> str:
    """The photo check of the features stage: a one-line note of what the run reads, or a DataError.

    - IMAGES=off (config `images: off`): a text-only run, by request.
    - no DATA/images/ folder, and no other folder of DATA holds photos, or an images/ folder with no
      photo in it (a catalogue without photos): a text-only run, said in the note.
    - photos elsewhere (a misnamed folder), or an images/ folder that gives fewer than 50% of the train
      or test rows a photo at images/{split}/{product_id}.jpg: stops, naming the folder, the counts and
      the first missing path, with the two ways on (move the photos, or IMAGES=off).
    """
    if images == "off":
        return "photos: off (IMAGES=off): a text-only run"
    data_dir = Path(data_dir)
    folder = data_dir / "images"
    fix = "move them to images/{train,test}/{product_id}.jpg, or run text-only with IMAGES=off"
    if not folder.is_dir():
        for d in sorted(p for p in data_dir.iterdir() if p.is_dir()):
            n, first = _photo_files(d)
            if n:
                raise DataError(f"{folder}: missing, but {d} holds {n} photos (e.g. {first}): {fix}")
        return f"photos: none ({folder} does not exist): a text-only run"
    shares = {s: float(f["has_image"].mean()) if len(f) else 1.0 for s, f in (("train", train), ("test", test))}
    if min(shares.values()) < MIN_PHOTO_SHARE:
        n_files, first_file = _photo_files(folder)
        if n_files == 0:
            return f"photos: none ({folder} holds no photo): a text-only run"
        split = min(shares, key=shares.get)
        frame = train if split == "train" else test
        missing = image_path(data_dir, split, frame.loc[~frame["has_image"], ID].iloc[0])
        raise DataError(
            f"{folder}: photos for {int(train['has_image'].sum())} of {len(train)} train rows and "
            f"{int(test['has_image'].sum())} of {len(test)} test rows (< {MIN_PHOTO_SHARE:.0%}); the first missing is "
            f"{missing}, and {n_files} photo files are there (e.g. {first_file}): {fix}"
        )
    return (
        f"photos: {int(train['has_image'].sum())} of {len(train)} train rows, "
        f"{int(test['has_image'].sum())} of {len(test)} test rows"
    )


def fingerprint(data_dir: str | Path) -> str:
    """Identity of a data directory for caches: a hash of the two split files' bytes."""
    h = hashlib.sha1()
    for name in ("train.parquet", "test.parquet"):
        path = Path(data_dir) / name
        if not path.is_file():
            raise DataError(f"{path}: missing file (DATA must hold train.parquet and test.parquet)")
        h.update(name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]
