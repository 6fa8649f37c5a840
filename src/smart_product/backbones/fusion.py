"""The fusion model: the photo, the text and the cheap per-row inputs read together by one model,
trained per fold (features/fusion.py runs it; its own classifier is the `finetuned` head).

Branches (any of them; a model needs one):
- photo: an EfficientNet's top n stages over cached lower maps (TopBlocks over MapRows), or the
  whole image backbone over the decode-once pixels (ImageEncoder over CachedRows, augmented on the
  batch's device as `finetune` does);
- text: a BERT-like encoder's top n layers over cached token states (TopEncoder over StateRows), or
  the whole encoder over tokenised texts;
- dense: label-free per-row matrices (the TF-IDF's SVD, the tabular columns, navec), standardised;
- shop: an embedding of the shop code (0: a shop with too few training rows).

Each branch's vector goes through its adapter (a linear layer to `adapter` units); the adapters'
outputs are concatenated, then LayerNorm, GELU, dropout and the class layer. A branch that a row
lacks (no readable photo), or that modality dropout drops for the row while training, is replaced by
that branch's learned absent vector: a missing photo is never read as a photo, and its cache slot's
bytes never reach the model. Loss: the fused cross-entropy + `aux_weight` x the mean of the
branches' own cross-entropies (a linear head on each adapter's output, over the rows that have the
branch), all with label smoothing.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..images import BatchAugment, CachedImageSet, CachedRows
from .distributed import dist_info
from .finetune import _distributed, train_epochs, warmup_cosine
from .hardware import autocast, device, prepare
from .lower import MapRows, StateRows

log = logging.getLogger(__name__)


def _to(x, dev):
    """A batch (tensors in nested dicts; None stays None) on `dev`."""
    if isinstance(x, dict):
        return {k: _to(v, dev) for k, v in x.items()}
    return x.to(dev, non_blocking=True) if isinstance(x, torch.Tensor) else x


@dataclass
class FusionRows:
    """Every row's inputs to the fusion model, by branch. `photo`, `text` and the `dense` arrays
    cover all rows of a split; `rows` are the rows these FusionRows stand for, so indexing selects
    rows without reading any. `tokenize` (texts -> a dict of tensors) is for a `text` of raw texts."""

    photo: MapRows | CachedRows | None = None
    text: StateRows | list | None = None
    dense: dict = field(default_factory=dict)
    shop: np.ndarray | None = None
    tokenize: object = None
    rows: np.ndarray | None = None

    def __post_init__(self):
        if self.rows is None:
            sources = [self.photo, self.text, self.shop, *self.dense.values()]
            self.rows = np.arange(len(next(s for s in sources if s is not None)))

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, idx) -> FusionRows:
        return replace(self, rows=self.rows[np.asarray(idx)])

    @property
    def photo_ok(self) -> np.ndarray:
        """Which of these rows have a readable photo (all False without a photo branch)."""
        if self.photo is None:
            return np.zeros(len(self.rows), bool)
        return self.photo[self.rows].ok

    def text_lengths(self) -> np.ndarray | None:
        if isinstance(self.text, StateRows):
            return self.text[self.rows].lengths()
        if self.text is not None:
            return np.array([len(self.text[r]) for r in self.rows])
        return None

    def batch(self, idx, rng: np.random.Generator | None = None) -> dict:
        """Rows `idx` (positions in these rows, sorted) as the model's input: {"n", "photo" (the
        rows with a photo only; None when none has one), "photo_ok", "text", "dense", "shop"}.
        `rng`: training, the cached maps augmented as the MapRows say."""
        r = self.rows[np.asarray(idx)]
        out: dict = {"n": len(r)}
        if self.photo is not None:
            ok = self.photo[r].ok
            present = r[ok]
            x = None
            if len(present) and isinstance(self.photo, MapRows):
                x = {"maps": self.photo.batch(present, rng)["maps"]}
            elif len(present):
                x = CachedImageSet(self.photo[present]).read(np.arange(len(present)))[0].permute(0, 3, 1, 2)
            out["photo"], out["photo_ok"] = x, torch.from_numpy(ok)
        if isinstance(self.text, StateRows):
            out["text"] = self.text.batch(r)
        elif self.text is not None:
            out["text"] = self.tokenize([self.text[i] for i in r])
        out["dense"] = {
            name: torch.from_numpy(np.ascontiguousarray(a[r], dtype=np.float32)) for name, a in self.dense.items()
        }
        if self.shop is not None:
            out["shop"] = torch.from_numpy(self.shop[r].astype(np.int64))
        return out


class FusionBatches:
    """Batches of FusionRows in a sampler's order (without one: `order`, or all rows in order) as
    (batch, positions, y), each batch's positions sorted (memory-mapped rows are read forwards).
    Training batches (labels given) augment cached maps from a generator seeded once."""

    def __init__(self, rows: FusionRows, batch_size: int, labels=None, sampler=None, seed: int = 0, order=None):
        self.rows, self.batch_size, self.labels, self.sampler, self.order = rows, batch_size, labels, sampler, order
        self.rng = np.random.default_rng(seed) if labels is not None else None

    def __len__(self):
        n = len(self.sampler) if self.sampler is not None else len(self.rows)
        return math.ceil(n / self.batch_size)

    def __iter__(self):
        if self.sampler is not None:
            order = np.fromiter(self.sampler, int)
        else:
            order = np.arange(len(self.rows)) if self.order is None else self.order
        for i in range(0, len(order), self.batch_size):
            idx = np.sort(order[i : i + self.batch_size])
            y = torch.as_tensor(self.labels[idx]) if self.labels is not None else torch.full((len(idx),), -1)
            yield self.rows.batch(idx, self.rng), idx, y


class FusionModel(nn.Module):
    """The branches' encoders and adapters, the fusion layers and the class layer (module doc).
    `forward(batch, drop)` -> (fused logits, {branch: (its own logits, rows that have it)});
    `embed(batch)` -> the fused vector the class layer reads (n x dim)."""

    def __init__(
        self,
        n_classes: int,
        photo: nn.Module | None = None,
        text: nn.Module | None = None,
        dense_dims: dict | None = None,
        n_shops: int = 0,
        adapter: int = 256,
        dropout: float = 0.2,
        photo_bf16: bool = False,
        text_bf16: bool = False,
    ):
        super().__init__()
        self.photo, self.text = photo, text
        self.photo_bf16, self.text_bf16 = photo_bf16, text_bf16
        self.dense_names = list(dense_dims or {})
        adapters = {}
        if photo is not None:
            adapters["photo"] = nn.Linear(photo.dim, adapter)
        if text is not None:
            adapters["text"] = nn.Linear(text.dim, adapter)
        for name, d in (dense_dims or {}).items():
            adapters[f"dense_{name}"] = nn.Linear(int(d), adapter)
        self.adapters = nn.ModuleDict(adapters)
        self.shop = nn.Embedding(n_shops, adapter) if n_shops else None
        self.branches = [*adapters, *(["shop"] if n_shops else [])]
        if not self.branches:
            raise ValueError("a fusion model needs at least one branch")
        self.absent = nn.ParameterDict({b: nn.Parameter(torch.zeros(adapter)) for b in self.branches})
        self.aux = nn.ModuleDict({b: nn.Linear(adapter, n_classes) for b in self.branches})
        self.dim = adapter * len(self.branches)
        self.norm, self.drop, self.head = nn.LayerNorm(self.dim), nn.Dropout(dropout), nn.Linear(self.dim, n_classes)

    def _photo(self, batch, n: int, dev):
        ok = batch["photo_ok"]
        z = torch.zeros(n, self.absent["photo"].numel(), device=dev)
        if batch["photo"] is not None:
            # on a CPU the convolutions train in float32 (bf16 autocast halves their training steps' throughput)
            with autocast(dev, self.photo_bf16 and not (self.training and dev.type == "cpu")):
                v = self.photo(batch["photo"]).float()
            z = z.index_copy(0, torch.nonzero(ok).squeeze(1), self.adapters["photo"](v))
        return z, ok

    def vectors(self, batch) -> dict:
        """Each branch's adapter output (n x adapter, float32) and the rows that have the branch."""
        dev = self.head.weight.device
        n = batch["n"]
        every = torch.ones(n, dtype=torch.bool, device=dev)
        out = {}
        if self.photo is not None:
            out["photo"] = self._photo(batch, n, dev)
        if self.text is not None:
            with autocast(dev, self.text_bf16):
                v = self.text(batch["text"]).float()
            out["text"] = (self.adapters["text"](v), every)
        for name in self.dense_names:
            out[f"dense_{name}"] = (self.adapters[f"dense_{name}"](batch["dense"][name]), every)
        if self.shop is not None:
            out["shop"] = (self.shop(batch["shop"]), every)
        return out

    def fuse(self, vecs: dict, drop: torch.Tensor | None = None) -> torch.Tensor:
        """LayerNorm + GELU of the concatenated branch vectors; a branch a row lacks, or that `drop`
        (n x branches, True: dropped) drops, enters as the branch's absent vector."""
        parts = []
        for i, b in enumerate(self.branches):
            z, has = vecs[b]
            use = has if drop is None else has & ~drop[:, i]
            parts.append(torch.where(use[:, None], z, self.absent[b].expand_as(z)))
        return nn.functional.gelu(self.norm(torch.cat(parts, 1)))

    def forward(self, batch, drop: torch.Tensor | None = None):
        vecs = self.vectors(batch)
        logits = self.head(self.drop(self.fuse(vecs, drop)))
        own = {b: (self.aux[b](z[has]), has) for b, (z, has) in vecs.items()} if self.training else {}
        return logits, own

    @torch.no_grad()
    def embed(self, batch) -> torch.Tensor:
        return self.fuse(self.vectors(batch))


def modality_drop(n: int, n_branches: int, p: float, gen: torch.Generator) -> torch.Tensor | None:
    """Which branches to drop for each of n rows (True: dropped), each with probability p; a row
    whose every branch came up dropped keeps them all. None when p is 0."""
    if p <= 0 or n_branches < 2:
        return None
    drop = torch.rand(n, n_branches, generator=gen) < p
    drop[drop.all(1)] = False
    return drop


def train_fusion(
    model: FusionModel,
    rows: FusionRows,
    labels,
    epochs: int = 3,
    lr: float = 3e-3,
    photo_lr: float = 5e-4,
    text_lr: float = 2e-4,
    batch_size: int = 64,
    weight_decay: float = 0.01,
    warmup: float = 0.1,
    label_smoothing: float = 0.1,
    aux_weight: float = 0.3,
    modality_dropout: float = 0.0,
    seed: int = 0,
    desc: str = "fusion",
) -> dict:
    """Train the fusion model on (rows, labels) in place: AdamW with a learning rate per part (the
    photo's and the text's trainable layers, everything else at `lr`), warm-up then cosine decay,
    gradients clipped to norm 1. Photos over the whole backbone are augmented on the device (resized
    crop, flip, rotation). Under torchrun the model is wrapped in DDP and each process trains on its
    shard of every epoch; `batch_size` is the global batch. Returns a small training log."""
    from torch.utils.data.distributed import DistributedSampler

    dev = device()
    rank, world = dist_info()
    torch.manual_seed(seed)
    labels = np.asarray(labels, dtype=np.int64)
    prepare(model, dev).train()
    if model.photo is not None:
        prepare(model.photo, dev)  # channels_last
    augment = None
    if isinstance(rows.photo, CachedRows):
        augment = BatchAugment(model.photo.size).to(dev)
    sampler = DistributedSampler(range(len(labels)), num_replicas=world, rank=rank, shuffle=True, seed=seed)
    loader = FusionBatches(rows, max(1, math.ceil(batch_size / world)), labels, sampler, seed)
    parts = {"photo": (model.photo, photo_lr), "text": (model.text, text_lr)}
    groups, inside = [], set()
    for module, part_lr in parts.values():
        if module is not None:
            ps = [p for p in module.parameters() if p.requires_grad]
            groups.append({"params": ps, "lr": part_lr})
            inside |= {id(p) for p in module.parameters()}
    rest = [p for p in model.parameters() if id(p) not in inside]
    groups.append({"params": rest, "lr": lr})
    params = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW(groups, weight_decay=weight_decay)
    sched = warmup_cosine(opt, epochs * len(loader), warmup)
    net = _distributed(model, dev, find_unused_parameters=True)  # a batch without a photo leaves some unused
    loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    gen = torch.Generator().manual_seed(seed)

    def step(x, y):
        x, y = _to(x, dev), y.to(dev)
        if augment is not None and x.get("photo") is not None:
            x["photo"] = augment(x["photo"])
        drop = modality_drop(x["n"], len(model.branches), modality_dropout, gen)
        logits, own = net(x, None if drop is None else drop.to(dev))
        loss = loss_fn(logits.float(), y)
        if aux_weight:
            aux = [loss_fn(z.float(), y[has]) for z, has in own.values() if has.any()]
            loss = loss + aux_weight * torch.stack(aux).mean()
        return loss, logits, y

    t0 = time.time()
    history = train_epochs(loader, epochs, step, opt, sched, params, desc, sampler)
    model.eval()
    return {
        "history": history,
        "rows": int(len(labels)),
        "batch_size": int(batch_size),
        "rows_with_photo": int(rows.photo_ok.sum()),
        "seconds": round(time.time() - t0, 2),
        "world_size": world,
        "branches": list(model.branches),
        "trainable_params": int(sum(p.numel() for p in params if p.requires_grad)),
    }


def embed_fusion(model: FusionModel, rows: FusionRows, batch_size: int = 128, desc: str = "fusion") -> tuple:
    """The fused vectors of every row (float32, n x model.dim; the class layer reads them), in
    batches of like text length; and rows/s."""
    dev = device()
    prepare(model, dev).eval()
    if model.photo is not None:
        prepare(model.photo, dev)
    lengths = rows.text_lengths()
    order = np.arange(len(rows)) if lengths is None else np.argsort(lengths, kind="stable")
    out = np.zeros((len(rows), model.dim), np.float32)
    t0 = time.time()
    with torch.inference_mode():
        for x, idx, _ in tqdm(FusionBatches(rows, batch_size, order=order), desc=desc, mininterval=2, leave=False):
            out[idx] = model.embed(_to(x, dev)).float().cpu().numpy()
    rate = len(rows) / max(time.time() - t0, 1e-9)
    log.info(
        "%s: %d rows in %.1fs (%.1f rows/s, batch %d, %s)",
        desc,
        len(rows),
        time.time() - t0,
        rate,
        batch_size,
        dev.type,
    )
    return out, rate
