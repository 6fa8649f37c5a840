"""Decode once: a split's images as one uint8 array on disk, read by every epoch and fold.

`image_cache(root, split, paths, size)` decodes each image once, at `size` x `size` (PIL:
`draft` for JPEG, RGB, bilinear resize: the same pixels as the per-image loader's eval
transform), with worker processes and a progress bar, into

    {root}/_images/{size}/{split}.u8        raw uint8, n x size x size x 3 (memory-mapped)
    {root}/_images/{size}/{split}.ok.npy    False: no path, missing or corrupt (its pixels are 0)
    {root}/_images/{size}/{split}.json      key (data fingerprint, size, the files' sizes and
                                            mtimes), shape, seconds, images/s; written last

A killed decode resumes: each chunk of CHUNK images is recorded in {split}.partial.npz once its
pixels are flushed, and a rerun with the same key decodes only the chunks not recorded there.

Fine-tuning and embedding then read batches from the memmap (`CachedRows`, `CachedImageSet`)
and augment on the batch tensor, on the GPU when there is one (`BatchAugment`, kornia):
per-fold fine-tuning reads every image (K + 1) x (epochs + embedding passes) times, and
decoding JPEGs on the CPU each time starves a GPU.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from .memory import PeakWindow, children_peak_gib

log = logging.getLogger(__name__)
CHUNK = 256  # images per worker task


def has_path(path) -> bool:
    """False for a missing image path (None, or NaN as pandas stores it)."""
    return path is not None and not (isinstance(path, float) and math.isnan(path))


def to_rgb(img):
    """A PIL image as 8-bit RGB, upright. 16-bit grayscale (PNG "I;16", or "I" above 255) is scaled
    to 8 bits first: PIL's own conversion clips it, and a 16-bit photo comes out all white. A photo
    stored turned with an EXIF orientation (as phone cameras write them) is turned back."""
    from PIL import Image, ImageOps

    if img.getexif().get(0x0112, 1) != 1:
        img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I;16") or (img.mode == "I" and img.getextrema()[1] > 255):
        a = np.asarray(img, dtype=np.float32)
        img = Image.fromarray(np.clip(a / 257.0, 0, 255).round().astype(np.uint8), "L")
    return img.convert("RGB")


def decode(path, size: int, draft: bool = True) -> np.ndarray | None:
    """One image as uint8 size x size x 3, or None when missing or unreadable.

    `draft` lets libjpeg decode at a reduced scale that is still >= size (much faster for big
    photos); the bilinear resize to size x size follows, as torchvision's Resize does on PIL images.
    """
    from PIL import Image

    if not has_path(path):
        return None
    try:
        with Image.open(path) as img:
            if draft:
                img.draft("RGB", (size, size))
            return np.asarray(to_rgb(img).resize((size, size), Image.BILINEAR), dtype=np.uint8)
    except Exception:
        return None


def _decode_chunk(task):
    file, n, size, start, paths, draft = task
    arr = np.memmap(file, np.uint8, mode="r+", shape=(n, size, size, 3))
    ok = np.zeros(len(paths), bool)
    for i, p in enumerate(paths):
        x = decode(p, size, draft)
        arr[start + i] = 0 if x is None else x  # zeros: no image (also over a killed run's pixels)
        ok[i] = x is not None
    arr.flush()
    return start, ok


def _files_key(paths) -> str:
    """The image files as they are now: path, size and mtime of each (a changed photo re-decodes)."""
    import hashlib

    h = hashlib.sha1()
    for p in paths:
        try:
            st = os.stat(p) if has_path(p) else None
        except OSError:
            st = None
        h.update(f"{p}|{st.st_size if st else -1}|{st.st_mtime_ns if st else -1}\n".encode())
    return h.hexdigest()[:16]


def _resume(partial: Path, key: str, file: Path, n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The ok mask and the chunks done of an interrupted decode of the same key into `file`, or a
    fresh start: the file zeroed, nothing done."""
    n_chunks = -(-n // CHUNK)
    try:
        with np.load(partial) as z:
            if str(z["key"]) == key and file.stat().st_size == max(n, 1) * size * size * 3:
                ok, done = z["ok"].copy(), z["done"].copy()
                log.info("images: resuming %s, %d of %d chunks already decoded", file, int(done.sum()), n_chunks)
                return ok, done
    except (OSError, KeyError, ValueError):
        pass
    np.memmap(file, np.uint8, mode="w+", shape=(max(n, 1), size, size, 3)).flush()  # zeros: no image
    return np.zeros(n, bool), np.zeros(n_chunks, bool)


def _save_partial(partial: Path, key: str, ok: np.ndarray, done: np.ndarray) -> None:
    tmp = partial.with_name(partial.name + ".tmp.npz")
    np.savez(tmp, key=np.array(key), ok=ok, done=done)
    os.replace(tmp, partial)


class ImageCache:
    """A split's decoded images: `array()` is the n x size x size x 3 uint8 memmap, `ok` the mask,
    `key` what they were decoded from (data fingerprint, size, the files' sizes and mtimes)."""

    def __init__(self, file: Path, n: int, size: int, ok: np.ndarray, key: str = ""):
        self.file, self.n, self.size, self.ok, self.key = Path(file), int(n), int(size), ok, key

    def array(self) -> np.ndarray:
        return np.memmap(self.file, np.uint8, mode="r", shape=(self.n, self.size, self.size, 3))

    def rows(self, rows=None) -> CachedRows:
        return CachedRows(self, np.arange(self.n) if rows is None else np.asarray(rows))


def image_cache(
    root: str | Path, split: str, paths, size: int, data_fp: str = "", draft: bool = True, workers: int | None = None
) -> ImageCache:
    """Decode `paths` once into {root}/_images/{size}/{split}.u8 (cached by the data fingerprint,
    size and the image files' sizes and mtimes); return the ImageCache. `workers`: decoding
    processes (default one per core; 0: in this process)."""
    from .config import config_hash, n_cpus

    paths = list(paths)
    folder = Path(root) / "_images" / str(size)
    folder.mkdir(parents=True, exist_ok=True)
    file, meta_file, ok_file = folder / f"{split}.u8", folder / f"{split}.json", folder / f"{split}.ok.npy"
    key = config_hash({"data": data_fp, "size": size, "draft": draft, "n": len(paths), "files": _files_key(paths)})
    if meta_file.is_file() and file.is_file():
        try:
            meta = json.loads(meta_file.read_text())
        except json.JSONDecodeError:
            meta = {}
        if meta.get("key") == key:
            log.info("images/%s at %d px: cached (%s)", split, size, file)
            return ImageCache(file, len(paths), size, np.load(ok_file), key)
    meta_file.unlink(missing_ok=True)
    n, t0, peak = len(paths), time.time(), PeakWindow()
    ok, done = _resume(folder / f"{split}.partial.npz", key, file, n, size)
    tasks = [(str(file), max(n, 1), size, s, paths[s : s + CHUNK], draft) for s in range(0, n, CHUNK)]
    todo = [t for i, t in enumerate(tasks) if not done[i]]
    # the parent only records finished chunks, so a worker per core (n_workers leaves one core free)
    workers = min(16, n_cpus()) if workers is None else int(workers)
    done_rows = n - sum(len(t[4]) for t in todo)
    bar = tqdm(total=n, initial=done_rows, desc=f"decode {split} images at {size}px", mininterval=2, leave=False)

    def finished(start, got):  # a chunk's pixels are flushed: record it, so a killed run resumes after it
        ok[start : start + len(got)] = got
        done[start // CHUNK] = True
        _save_partial(folder / f"{split}.partial.npz", key, ok, done)
        bar.update(len(got))

    if workers > 0 and len(todo) > 1:
        with ProcessPoolExecutor(min(workers, len(todo))) as pool:
            for start, got in pool.map(_decode_chunk, todo):
                finished(start, got)
    else:
        for task in todo:
            finished(*_decode_chunk(task))
    bar.close()
    seconds = time.time() - t0
    np.save(ok_file, ok)
    (folder / f"{split}.partial.npz").unlink(missing_ok=True)
    meta = {
        "key": key,
        "split": split,
        "shape": [n, size, size, 3],
        "images_ok": int(ok.sum()),
        "no_image": int(n - ok.sum()),
        "draft": draft,
        "workers": workers,
        "seconds": round(seconds, 2),
        "resumed_rows": done_rows,  # decoded by an earlier, killed run
        "images_per_s": round((n - done_rows) / max(seconds, 1e-9), 1),  # this run's own
        "bytes": int(file.stat().st_size),
        "peak_rss_gib": peak.gib(),  # this process's; a decode worker's is its own
        "worker_peak_rss_gib": children_peak_gib() if workers > 0 and len(todo) > 1 else None,
    }
    meta_file.write_text(json.dumps(meta, indent=2))
    log.info(
        "images/%s: decoded %d images (%d without one; %d resumed) at %d px in %.1fs (%.0f img/s, %d workers) -> %s"
        " (%.2f GB); peak RSS %.2f GiB, a worker's %s GiB",
        split,
        n,
        n - ok.sum(),
        done_rows,
        size,
        seconds,
        meta["images_per_s"],
        workers,
        file,
        meta["bytes"] / 1e9,
        meta["peak_rss_gib"],
        meta["worker_peak_rss_gib"],
    )
    return ImageCache(file, n, size, ok, key)


class CachedRows:
    """Rows of an ImageCache: what embed() / finetune() take in place of image paths."""

    def __init__(self, cache: ImageCache, rows: np.ndarray):
        self.cache, self.rows = cache, np.asarray(rows, dtype=np.int64)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, idx) -> CachedRows:
        return CachedRows(self.cache, self.rows[idx if isinstance(idx, slice) else np.asarray(idx)])

    @property
    def ok(self) -> np.ndarray:
        return self.cache.ok[self.rows]


class CachedImageSet(Dataset):
    """Batches from the memmap: `dataset[list_of_indices]` -> (uint8 b x 3 x S x S, ok, labels).

    Used with a BatchSampler as the DataLoader's sampler (batch_size=None): one fancy-indexed
    read per batch (indices sorted, so the reads go forward through the file). `augment` (a
    BatchAugment) runs here, in the DataLoader worker, when training on the CPU: beside the
    model's compute instead of before it; on a GPU it runs on the device instead.
    """

    def __init__(self, rows: CachedRows, labels=None, augment=None):
        self.rows, self.labels, self.augment = rows, None if labels is None else np.asarray(labels), augment
        self._arr = None

    def __len__(self):
        return len(self.rows)

    def __getstate__(self):  # worker processes reopen the memmap instead of pickling its pages
        return {**self.__dict__, "_arr": None}

    def read(self, idx, out: torch.Tensor | None = None):
        """Rows `idx` (sorted first) -> (uint8 n x S x S x 3, ok, labels), into `out` when given
        (a pinned buffer): one slice when the rows are consecutive, else a gather."""
        if self._arr is None:
            self._arr = self.rows.cache.array()
        arr = self._arr
        idx = np.sort(np.atleast_1d(np.asarray(idx, dtype=np.int64)))
        rows, n = self.rows.rows[idx], len(idx)
        if n and not 0 <= rows.min() <= rows.max() < len(arr):
            raise IndexError(f"{self.rows.cache.file}: rows {rows.min()}..{rows.max()} outside its {len(arr)}")
        x = torch.empty((n,) + arr.shape[1:], dtype=torch.uint8) if out is None else out[:n]
        if n and (np.diff(rows) == 1).all():  # consecutive rows: one sequential read
            x.numpy()[:] = arr[rows[0] : rows[-1] + 1]
        else:
            np.take(arr, rows, axis=0, out=x.numpy())
        ok = torch.from_numpy(self.rows.cache.ok[rows])
        y = (
            torch.full((n,), -1, dtype=torch.long)
            if self.labels is None
            else torch.from_numpy(self.labels[idx].astype(np.int64))
        )
        return x, ok, y

    def __getitem__(self, idx):
        x, ok, y = self.read(idx)
        x = x.permute(0, 3, 1, 2)
        if self.augment is not None:
            x = self.augment(x)
        return x, ok, y


class CachedBatches:
    """Batches of the decode-once cache without a DataLoader: a reader thread copies each batch's
    rows from the memmap (`CachedImageSet.read`) straight into a pinned buffer, the main thread
    sends it to the device (non-blocking) and yields it NCHW (channels_last memory). No worker
    processes, no inter-process copy, no pin-memory copy: the DataLoader route fed an H100 at
    0.48x the bare forward (9,565 against 19,785 img/s).

    Same batches, same order as the DataLoader over `CachedImageSet` with a BatchSampler:
    `batches` is a BatchSampler (re-read each epoch: a DistributedSampler's `set_epoch` applies).
    Yields (x uint8 on `dev`, ok, labels); `len()` is the batch count. A ring of `prefetch + 2`
    buffers: the reader reuses a buffer only after its copy to the device is done (a CUDA
    event); on the CPU every batch gets its own tensor.
    """

    def __init__(self, dataset: CachedImageSet, batches, dev: torch.device, prefetch: int = 2):
        self.ds, self.batches, self.dev, self.prefetch = dataset, batches, torch.device(dev), prefetch

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        import queue
        import threading

        ds, cuda = self.ds, self.dev.type == "cuda"
        assert ds.augment is None, "CachedBatches: augmentation runs on the device, after it"
        size, width = ds.rows.cache.size, self.batches.batch_size
        ring = (
            [torch.empty((width, size, size, 3), dtype=torch.uint8, pin_memory=True) for _ in range(self.prefetch + 2)]
            if cuda
            else None
        )
        events = [None] * len(ring) if cuda else None
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def read():
            try:
                for b, idx in enumerate(self.batches):
                    if stop.is_set():
                        return
                    k = b % len(ring) if cuda else None
                    if cuda and events[k] is not None:
                        events[k].synchronize()  # its last batch has reached the device
                    buf, ok, y = ds.read(idx, ring[k] if cuda else None)
                    q.put((k, buf, ok, y))
                q.put(None)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the consuming thread
                q.put(exc)

        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        try:
            while (item := q.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                k, buf, ok, y = item
                if cuda:
                    x = buf.to(self.dev, non_blocking=True)
                    done = torch.cuda.Event()
                    done.record()
                    events[k] = done  # published only once recorded: the reader waits on it
                else:
                    x = buf
                yield x.permute(0, 3, 1, 2), ok, y
        finally:
            stop.set()
            while thread.is_alive():  # let a blocked reader finish its put
                try:
                    q.get_nowait()
                except queue.Empty:
                    thread.join(0.01)


class BatchAugment(nn.Module):
    """Training augmentation on a uint8 batch tensor, per-sample random (kornia), on the batch's
    device: resized crop (scale 0.6-1), horizontal flip, rotation (15 degrees); uint8 out."""

    def __init__(self, size: int):
        super().__init__()
        import kornia.augmentation as K

        self.aug = nn.Sequential(
            K.RandomResizedCrop((size, size), scale=(0.6, 1.0)), K.RandomHorizontalFlip(), K.RandomRotation(15.0)
        )

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.aug(x.float() / 255.0) * 255.0).round_().clamp_(0, 255).to(torch.uint8)
