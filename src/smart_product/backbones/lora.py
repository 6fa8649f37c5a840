"""LoRA adapters (peft) for text encoders: `finetune.lora` trains the adapters only; they are
merged into the weights at the end, so embedding needs no peft."""

from __future__ import annotations

from torch import nn

from ..config import ConfigError
from .build import TextEncoder


def add_lora(encoder: nn.Module, lora: dict) -> nn.Module:
    """Wrap a text encoder's transformer in LoRA adapters (peft); only the adapters train.

    `lora`: {r: 8, alpha: 16, dropout: 0.05, target_modules: [query, value] (peft's default for
    the architecture when absent)}. Undo with `merge_lora` (adapters folded into the weights)."""
    from peft import LoraConfig, get_peft_model

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


def merge_lora(encoder: nn.Module) -> nn.Module:
    from peft import PeftModel

    if isinstance(getattr(encoder, "model", None), PeftModel):
        encoder.model = encoder.model.merge_and_unload()
    return encoder
