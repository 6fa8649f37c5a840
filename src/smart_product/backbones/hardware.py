"""Where a backbone runs and in what precision: the device (CUDA when present), bf16 autocast
(always on a GPU; on a CPU with the set's `cpu_bf16` option), and moving a model or a batch there."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


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


def to_device(x, dev):
    """A batch (a tensor, or a dict of tensors) on `dev`, copied without blocking."""
    if isinstance(x, dict):
        return {k: v.to(dev, non_blocking=True) for k, v in x.items()}
    return x.to(dev, non_blocking=True)


def prepare(encoder: nn.Module, dev) -> nn.Module:
    """The encoder on `dev`; convolutional ones (`channels_last = True`) in channels_last memory."""
    encoder.to(dev)
    if getattr(encoder, "channels_last", False):
        encoder.to(memory_format=torch.channels_last)
    return encoder
