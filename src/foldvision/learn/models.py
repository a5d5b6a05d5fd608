"""timm models by name: random init, timm's pretrained weights, or a local weight file through timm's loader;
and what a model's input needs (`preprocessing`). foldvision's own checkpoints: foldvision.learn.checkpoint."""

from __future__ import annotations

from pathlib import Path

import timm
from torch import nn

from foldvision.config import ModelConfig
from foldvision.errors import UserError, did_you_mean
from foldvision.learn.transforms import Preprocessing


def _check_name(name: str) -> None:
    """An unknown architecture, or an unknown pretrained tag (`arch.tag`), is an error with close names."""
    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        close = did_you_mean(name, timm.list_models(), n=5)
        raise UserError(f"model.name: timm has no model '{name}'{close}; list them with timm.list_models('*pattern*')")
    if tag and name not in timm.list_pretrained(f"{arch}.*"):
        tags = timm.list_pretrained(f"{arch}.*")
        raise UserError(f"model.name: timm has no weights '{name}'{did_you_mean(name, tags, n=5)}; "
                        f"{arch} has {', '.join(tags) or 'no pretrained tags'}")


SIZE_KWARGS = ("img_size", "dynamic_img_size")  # ViT-style models' arguments; CNNs take any input size


def _create(name: str, pretrained: bool, kwargs: dict) -> nn.Module:
    """timm.create_model; ViT-style models take img_size and dynamic_img_size (position embeddings are
    resampled), CNNs take any input size and reject the arguments, so they are dropped for them."""
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as e:
        if not any(k in str(e) and k in kwargs for k in SIZE_KWARGS):
            raise
        return timm.create_model(name, pretrained=pretrained,
                                 **{k: v for k, v in kwargs.items() if k not in SIZE_KWARGS})


def create_model(cfg: ModelConfig, num_classes: int, in_chans: int, pretrained: bool | None = None) -> nn.Module:
    """Build `cfg.name` with a `num_classes` head and `in_chans` input channels.

    `pretrained=False` skips any weight loading (used when a fold checkpoint is loaded right after).
    """
    _check_name(cfg.name)
    kwargs: dict = {"num_classes": num_classes, "in_chans": in_chans,
                    "drop_rate": cfg.drop_rate, "drop_path_rate": cfg.drop_path_rate}
    if cfg.img_size is not None:
        kwargs["img_size"] = cfg.img_size
    if cfg.dynamic_img_size:
        kwargs["dynamic_img_size"] = True
    want_weights = (cfg.pretrained or cfg.pretrained_file is not None) if pretrained is None else pretrained
    if want_weights and cfg.pretrained_file is not None:
        path = Path(cfg.pretrained_file)
        if not path.is_file():
            raise UserError(f"model.pretrained_file: {path} not found")
        # timm's own loader: drops the classifier when num_classes differs, sums the stem for in_chans=1
        kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
        try:
            return _create(cfg.name, True, kwargs)
        except (RuntimeError, KeyError, ValueError) as e:  # strict load fails, or a filter_fn meets a stray key
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UserError(f"model.pretrained_file: {path} does not fit {cfg.name} ({first}); "
                            "use weights saved from this timm architecture") from None
    if want_weights:
        try:
            return _create(cfg.name, True, kwargs)
        except (OSError, RuntimeError, ValueError) as e:
            if "Error(s) in loading state_dict" in str(e):
                raise
            hub_id = timm.models.get_pretrained_cfg(cfg.name)
            hub = getattr(hub_id, "hf_hub_id", None) if hub_id else None
            where = f"huggingface-cli download {hub}" if hub else f"the weights of {cfg.name}"
            raise UserError(
                f"model.pretrained: could not load timm's weights for {cfg.name} ({type(e).__name__}); "
                f"offline, fetch them first on a connected machine ({where}) into the HF cache, "
                "or set model.pretrained_file=PATH"
            ) from None
    return _create(cfg.name, False, kwargs)


def preprocessing(model: nn.Module, cfg: ModelConfig, in_chans: int) -> Preprocessing:
    """Input size (model.img_size, else the model's), interpolation and normalisation from the model (EVA-02
    uses CLIP statistics)."""
    resolved = timm.data.resolve_model_data_config(model)
    size = cfg.img_size or resolved["input_size"][-1]
    mean, std = tuple(resolved["mean"]), tuple(resolved["std"])
    if in_chans == 1:  # timm sums the stem's RGB weights: a gray image stands for equal R, G, B
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    return Preprocessing(size, resolved.get("interpolation", "bilinear"), mean, std, in_chans)
