"""The lower-layer caches. A backbone's lower layers, kept as pretrained, use no labels, so their
outputs are computed once for every train and test row and shared by all folds; fold k trains only
the top over them (docs/folds.md, the fold rule), which is what makes per-fold fine-tuning fit on 2 cores.

- Text (`finetune.train_layers: n`): the token states after the embeddings and the first
  layers - n transformer layers (`lower_states` -> StateRows, float16 n x T x H with the attention
  masks), read by TopEncoder: the top n layers, mean-pooled like TextEncoder.
- Images (`finetune.train_blocks: n`, timm EfficientNet family): the feature maps after the stem
  and the first stages - n stages (`lower_maps` -> MapRows, float16 n x C x h x w), read by
  TopBlocks: the top n stages, the 1x1 head conv and the global pooling, as the whole model ends.
  Cached maps take no input augmentation; in its place a row's maps are, at random each time it is
  drawn, its photo's or its mirrored photo's (`augment: mirror`, a second cache made in the same
  pass: twice the lower pass's time and disk), or its photo's maps flipped left-right
  (`augment: flip`: no second cache, an approximation, as convolutions are not mirror-symmetric).

RowBatches reads either kind of rows in a sampler's order, as (x, ok, y) like the other loaders.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..config import ConfigError
from .build import ImageEncoder, TextEncoder
from .hardware import autocast, device, prepare, to_device

log = logging.getLogger(__name__)
AUGMENT = (None, "none", "mirror", "flip")


@dataclass
class StateRows:
    """Rows of a text encoder's cached lower-layer token states (float16 n x T x H, usually
    memory-mapped) with their attention masks (n x T). Indexing selects rows without reading them."""

    states: np.ndarray
    mask: np.ndarray
    rows: np.ndarray | None = None

    def __post_init__(self):
        if self.rows is None:
            self.rows = np.arange(len(self.mask))

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, idx):
        return StateRows(self.states, self.mask, self.rows[np.asarray(idx)])

    def lengths(self) -> np.ndarray:
        return self.mask[self.rows].sum(1)

    def batch(self, idx) -> dict:
        """These rows' states (float32) and masks, cut to the longest row of the batch."""
        r = self.rows[np.asarray(idx)]
        mask = self.mask[r]
        t = max(1, int(mask.sum(1).max()))
        states = np.asarray(self.states[r][:, :t], dtype=np.float32)
        return {"states": torch.from_numpy(states), "mask": torch.from_numpy(mask[:, :t].astype(np.int64))}


@dataclass
class MapRows:
    """Rows of an image backbone's cached lower feature maps (float16 n x C x h x w, usually
    memory-mapped; zeros where `ok_all` is False: no image), with the mirrored photo's maps or None.
    Indexing selects rows without reading them. `augment` (training batches, see the module):
    None, "mirror" (needs `mirror`) or "flip"."""

    maps: np.ndarray
    ok_all: np.ndarray
    mirror: np.ndarray | None = None
    rows: np.ndarray | None = None
    augment: str | None = None

    def __post_init__(self):
        if self.rows is None:
            self.rows = np.arange(len(self.ok_all))
        if self.augment not in AUGMENT:
            raise ConfigError(f"finetune.augment: mirror, flip or none, not {self.augment!r}")
        if self.augment == "none":
            self.augment = None
        if self.augment == "mirror" and self.mirror is None:
            raise ValueError("MapRows: augment 'mirror' needs the mirrored photos' maps")

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, idx):
        return MapRows(self.maps, self.ok_all, self.mirror, self.rows[np.asarray(idx)], self.augment)

    def augmented(self, augment: str | None) -> MapRows:
        return MapRows(self.maps, self.ok_all, self.mirror, self.rows, augment)

    @property
    def ok(self) -> np.ndarray:
        return self.ok_all[self.rows]

    def batch(self, idx, rng: np.random.Generator | None = None) -> dict:
        """These rows' maps (float32): {"maps"}, plus {"mirror"} when there is a mirror cache and no
        `rng`; with `rng` (training) each row's maps are augmented at random as `augment` says.
        `idx` must be sorted (memory-mapped rows are read forwards)."""
        r = self.rows[np.asarray(idx)]
        if rng is None or self.augment is None:
            out = {"maps": torch.from_numpy(np.asarray(self.maps[r], dtype=np.float32))}
            if rng is None and self.mirror is not None:
                out["mirror"] = torch.from_numpy(np.asarray(self.mirror[r], dtype=np.float32))
            return out
        flip = rng.random(len(r)) < 0.5
        x = np.empty((len(r),) + self.maps.shape[1:], np.float32)
        if self.augment == "mirror":
            x[~flip], x[flip] = self.maps[r[~flip]], self.mirror[r[flip]]
        else:
            x[:] = self.maps[r]
            x[flip] = x[flip][..., ::-1]
        return {"maps": torch.from_numpy(x)}


class RowBatches:
    """Batches of cached rows (StateRows, MapRows) in the sampler's order (all rows in order without
    one), as (x, ok, y). Training batches (with labels) of MapRows are augmented as the rows say,
    from a generator seeded once (`seed`), so a run is repeatable."""

    def __init__(self, rows, batch_size: int, labels=None, sampler=None, seed: int = 0):
        self.rows, self.batch_size, self.labels, self.sampler = rows, batch_size, labels, sampler
        self.rng = np.random.default_rng(seed) if labels is not None and isinstance(rows, MapRows) else None

    def __len__(self):
        n = len(self.sampler) if self.sampler is not None else len(self.rows)
        return math.ceil(n / self.batch_size)

    def __iter__(self):
        order = np.fromiter(self.sampler, int) if self.sampler is not None else np.arange(len(self.rows))
        for i in range(0, len(order), self.batch_size):
            idx = order[i : i + self.batch_size]
            if isinstance(self.rows, MapRows):
                idx = np.sort(idx)
                x = self.rows.batch(idx, self.rng)
            else:
                x = self.rows.batch(idx)
            y = torch.as_tensor(self.labels[idx]) if self.labels is not None else torch.full((len(idx),), -1)
            yield x, torch.ones(len(idx), dtype=torch.bool), y


def _additive_mask(mask: torch.Tensor) -> torch.Tensor:
    return (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min


class TopEncoder(nn.Module):
    """The top n layers of a BERT-like TextEncoder, reading cached lower-layer states (StateRows
    batches), mean-pooled like TextEncoder. The layers are the encoder's own modules, so training
    this trains them in place."""

    def __init__(self, encoder: TextEncoder, n: int):
        super().__init__()
        layers = list(encoder.model.encoder.layer)
        self.layers = nn.ModuleList(layers[len(layers) - n :])
        self.dim = encoder.dim

    def forward(self, batch):
        h, mask = batch["states"], batch["mask"]
        ext = _additive_mask(mask)
        for layer in self.layers:
            h = layer(h, attention_mask=ext)
            h = h[0] if isinstance(h, tuple) else h
        h = h.float()
        m = mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp(min=1.0)


def lower_states(
    encoder: TextEncoder,
    texts,
    n_lower: int,
    states: np.ndarray,
    mask: np.ndarray,
    batch_size: int = 64,
    cpu_bf16: bool = False,
    desc="lower layers",
) -> float:
    """Token states after the embeddings and the first n_lower layers of every text (no labels),
    into `states` (n x max_length x H, float16; a memmap for large sets) and `mask`; texts/s."""
    dev = device()
    prepare(encoder, dev).eval()
    model, texts = encoder.model, list(texts)
    order = np.argsort([len(t) for t in texts], kind="stable")  # batches of like length pad little
    t0 = time.time()
    with torch.inference_mode(), autocast(dev, cpu_bf16):
        for i in tqdm(range(0, len(texts), batch_size), desc=desc, mininterval=2, leave=False):
            rows = order[i : i + batch_size]
            b = encoder.tokenizer(
                [texts[r] for r in rows],
                padding=True,
                truncation=True,
                max_length=encoder.max_length,
                return_tensors="pt",
            )
            b = to_device(dict(b), dev)
            h = model.embeddings(input_ids=b["input_ids"], token_type_ids=b.get("token_type_ids"))
            ext = _additive_mask(b["attention_mask"])
            for layer in list(model.encoder.layer)[:n_lower]:
                h = layer(h, attention_mask=ext)
                h = h[0] if isinstance(h, tuple) else h
            t = h.shape[1]
            h = h.float() * b["attention_mask"].unsqueeze(-1)  # padding: zeros, whatever the batch
            states[rows, :t] = h.cpu().numpy().astype(np.float16)
            mask[rows, :t] = b["attention_mask"].cpu().numpy()
    rate = len(texts) / max(time.time() - t0, 1e-9)
    log.info(
        "%s: %d texts through %d lower layers in %.1fs (%.1f text/s)", desc, len(texts), n_lower, time.time() - t0, rate
    )
    return rate


def train_top_layers(encoder: nn.Module, n: int) -> nn.Module:
    """Freeze a text encoder's embeddings and all but its top n transformer layers (BERT-like
    models: `encoder.layer`); n = 0 trains the class head alone. On a CPU the frozen word
    embeddings (e5: 96M of its 118M weights) then need no gradients and no optimizer state."""

    layers = getattr(getattr(getattr(encoder, "model", None), "encoder", None), "layer", None)
    if not isinstance(encoder, TextEncoder) or layers is None:
        raise ConfigError("finetune.train_layers: for text encoders with BERT-like layers (model.encoder.layer)")
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= len(layers):
        raise ConfigError(f"finetune.train_layers: an integer from 0 to {len(layers)}, not {n!r}")
    for p in encoder.model.parameters():
        p.requires_grad = False
    for layer in list(layers)[len(layers) - n :]:
        for p in layer.parameters():
            p.requires_grad = True
    return encoder


# ---------------------------------------------------------------- images: the lower stages' maps


def _efficientnet(encoder) -> nn.Module:
    """The timm EfficientNet-family model (stem, stages in `blocks`, 1x1 head conv) of an ImageEncoder."""
    from timm.models.efficientnet import EfficientNet

    model = getattr(encoder, "model", None)
    if not isinstance(encoder, ImageEncoder) or not isinstance(model, EfficientNet):
        raise ConfigError(
            "finetune.train_blocks: for timm EfficientNet-family image models (conv_stem, blocks, conv_head: "
            f"tf_efficientnet_lite0, tf_efficientnetv2_s, ...), not {type(model).__name__}"
        )
    return model


def n_stages(encoder: ImageEncoder) -> int:
    return len(_efficientnet(encoder).blocks)


def train_top_blocks(encoder: ImageEncoder, n: int) -> ImageEncoder:
    """Freeze an image encoder's stem and all but its top n stages; the top n stages and the 1x1 head
    conv (conv_head, bn2) train (n = 0: the head conv alone). Checks n against the model."""
    model = _efficientnet(encoder)
    stages = len(model.blocks)
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= stages:
        raise ConfigError(f"finetune.train_blocks: an integer from 0 to {stages} (the model's stages), not {n!r}")
    for p in model.parameters():
        p.requires_grad = False
    for module in [*list(model.blocks)[stages - n :], model.conv_head, model.bn2]:
        for p in module.parameters():
            p.requires_grad = True
    return encoder


class TopBlocks(nn.Module):
    """The top n stages of an EfficientNet-family ImageEncoder, its 1x1 head conv and its global
    pooling, reading cached lower maps (MapRows batches): the same pooled vector the whole model
    gives. The modules are the encoder's own, so training this trains them in place."""

    channels_last = True

    def __init__(self, encoder: ImageEncoder, n: int):
        super().__init__()
        model = _efficientnet(encoder)
        self.blocks = nn.Sequential(*list(model.blocks)[len(model.blocks) - n :])
        self.conv_head, self.bn2, self.pool = model.conv_head, model.bn2, model.global_pool
        self.dim = encoder.dim

    def forward(self, batch):
        x = batch["maps"].contiguous(memory_format=torch.channels_last)
        return self.pool(self.bn2(self.conv_head(self.blocks(x))))


def _lower_modules(encoder: ImageEncoder, n_lower: int) -> list[nn.Module]:
    model = _efficientnet(encoder)
    return [model.conv_stem, model.bn1, *list(model.blocks)[:n_lower]]


def map_shape(encoder: ImageEncoder, n_lower: int) -> tuple[int, int, int]:
    """(C, h, w) of the maps after the first n_lower stages at the encoder's image size."""
    x = torch.zeros(1, 3, encoder.size, encoder.size)
    with torch.inference_mode():
        for m in _lower_modules(encoder.eval(), n_lower):
            x = m(x)
    return tuple(x.shape[1:])


def lower_maps(
    encoder: ImageEncoder,
    images,
    n_lower: int,
    maps: np.ndarray,
    mirror: np.ndarray | None = None,
    batch_size: int = 64,
    cpu_bf16: bool = False,
    desc="lower stages",
) -> float:
    """Feature maps after the stem and the first n_lower stages of every image (no labels), into
    `maps` (n x C x h x w float16, a memmap for large sets; `map_shape`) and, when given, those of
    the mirrored image into `mirror`, in one read of the decode-once cache (`images`: CachedRows).
    Rows without an image are never pushed through the model: their maps stay zeros. Images/s."""
    from torch.utils.data import BatchSampler

    from ..images import CachedBatches, CachedImageSet

    dev = device()
    prepare(encoder, dev).eval()
    lower = _lower_modules(encoder, n_lower)
    rows = np.flatnonzero(images.ok)
    batches = CachedBatches(CachedImageSet(images[rows]), BatchSampler(range(len(rows)), batch_size, False), dev)
    t0, i = time.time(), 0
    with torch.inference_mode(), autocast(dev, cpu_bf16):
        for x, _, _ in tqdm(batches, desc=desc, mininterval=2, leave=False):
            x = encoder.normalise(x)
            for out, view in ((maps, x), (mirror, x.flip(-1))):
                if out is None:
                    continue
                for m in lower:
                    view = m(view)
                out[rows[i : i + len(x)]] = view.float().cpu().numpy().astype(np.float16)
            i += len(x)
    seconds = time.time() - t0
    rate = len(rows) / max(seconds, 1e-9)
    log.info(
        "%s: %d images through the stem and %d stages%s in %.1fs (%.1f img/s); %d rows without an image left at zeros",
        desc,
        len(rows),
        n_lower,
        " (and their mirror images)" if mirror is not None else "",
        seconds,
        rate,
        len(images) - len(rows),
    )
    return rate
