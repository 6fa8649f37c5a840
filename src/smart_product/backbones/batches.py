"""Batching one modality for a model: images by path (decoded per item, PIL transforms) or as
rows of the decode-once cache (images.py), texts (tokenised per batch), or rows of a lower-layer
cache (lower.py). `Loader(encoder, kind).make(items, batch_size, ...)` picks the route."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..config import n_workers
from ..images import CachedBatches, CachedImageSet, CachedRows, has_path, to_rgb
from .hardware import device
from .lower import MapRows, RowBatches, StateRows


class ImageSet(Dataset):
    """Images by path, decoded per item (`image_cache: false`); a missing or unreadable image
    gives zeros and ok=False. The default reads the decode-once cache instead (images.py)."""

    def __init__(self, paths, transform, labels=None):
        self.paths, self.transform, self.labels = list(paths), transform, labels

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image

        path, ok = self.paths[i], True
        try:
            if not has_path(path):
                raise FileNotFoundError
            with Image.open(path) as img:
                img.draft("RGB", (self.size, self.size))  # JPEG: decode at a reduced scale >= size
                x = self.transform(to_rgb(img))
        except Exception:
            ok = False
            x = torch.zeros(3, self.size, self.size, dtype=torch.uint8)
        y = -1 if self.labels is None else int(self.labels[i])
        return x, ok, y

    @property
    def size(self):
        return self.transform.size


class _Transform:
    """PIL -> uint8 CHW tensor at size x size (augmented when training); normalised later on the device."""

    def __init__(self, size, train: bool):
        from torchvision import transforms as T

        self.size = size
        to_uint8 = T.PILToTensor()
        if train:
            self.t = T.Compose(
                [T.RandomResizedCrop(size, scale=(0.6, 1.0)), T.RandomHorizontalFlip(), T.RandomRotation(15), to_uint8]
            )
        else:
            self.t = T.Compose([T.Resize((size, size)), to_uint8])

    def __call__(self, img):
        return self.t(img)


class TextSet(Dataset):
    def __init__(self, texts, labels=None):
        self.texts, self.labels = list(texts), labels

    def __len__(self):
        return len(self.texts)

    def __getitem__(self, i):
        return self.texts[i], True, -1 if self.labels is None else int(self.labels[i])


@dataclass
class Loader:
    """How to batch one modality. Images come as paths (decoded per item, PIL transforms) or as
    CachedRows of the decode-once cache (batched memmap reads; augmentation later, on the device)."""

    encoder: nn.Module
    kind: str  # image | text

    def dataset(self, items, labels=None, train=False, augment=None):
        if isinstance(items, CachedRows):
            return CachedImageSet(items, labels, augment)
        if self.kind == "image":
            return ImageSet(items, _Transform(self.encoder.size, train), labels)
        return TextSet(items, labels)

    def collate(self):
        if self.kind == "image":
            return None
        tok, max_len = self.encoder.tokenizer, self.encoder.max_length

        def fn(batch):
            texts, ok, y = zip(*batch)
            enc = tok(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
            return dict(enc), torch.tensor(ok), torch.tensor(y)

        return fn

    def make(self, items, batch_size, labels=None, train=False, workers=None, sampler=None, augment=None, seed=0):
        """A DataLoader; `sampler` (training: a DistributedSampler, also for one process) orders the rows.
        Rows of a lower-layer cache: RowBatches (`seed`: its augmentation's generator).

        Cached images: `CachedBatches` (a reader thread, pinned buffers, no worker processes), except
        when augmenting on the CPU (`augment`): then a DataLoader worker does it beside the model."""
        from torch.utils.data import BatchSampler, SequentialSampler

        if isinstance(items, (StateRows, MapRows)):  # a lower-layer cache: plain array reads
            return RowBatches(items, batch_size, labels, sampler, seed)
        dev = device()
        cached = isinstance(items, CachedRows)
        if self.kind != "image":
            workers = 0
        elif not cached:
            workers = n_workers(workers)
        else:
            workers = min(1, n_workers(workers)) if augment is not None else 0
        ds = self.dataset(items, labels, train, augment)
        if cached and augment is None:  # a reader thread and pinned buffers, no worker processes
            order = sampler if sampler is not None else range(len(ds))
            return CachedBatches(ds, BatchSampler(order, batch_size, drop_last=False), dev)
        common = dict(
            num_workers=workers,
            pin_memory=dev.type == "cuda",
            persistent_workers=False,
            prefetch_factor=4 if workers else None,
        )
        if cached:  # one memmap read per batch
            order = sampler if sampler is not None else SequentialSampler(ds)
            return DataLoader(ds, sampler=BatchSampler(order, batch_size, drop_last=False), batch_size=None, **common)
        return DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            collate_fn=self.collate(),
            drop_last=False,
            **common,
        )
