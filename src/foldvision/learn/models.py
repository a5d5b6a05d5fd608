"""timm models by name: random init, timm's pretrained weights, or a local weight file through timm's loader;
and what a model's input needs (`preprocessing`). foldvision's own checkpoints: foldvision.learn.checkpoint."""

from __future__ import annotations

from pathlib import Path

import timm
from torch import nn

from foldvision.config import ModelConfig
from foldvision.errors import UserError, did_you_mean
from foldvision.learn.transforms import Preprocessing


SOURCES = ("hf-hub", "local-dir")  # timm's prefixes: `hf-hub:<repo>`, `local-dir:<folder>` (parse_model_name)


def _check_name(name: str) -> None:
    """An unknown architecture, or an unknown pretrained tag (`arch.tag`), is an error with close names.
    `hf-hub:<repo>` and `local-dir:<folder>` are timm's own (timm.is_model is False for both): a local folder
    must hold timm's config.json (timm.models.save_for_hf); the hub checks its own names."""
    source, where = timm.models.parse_model_name(name)
    if source == "local-dir" and not (Path(where) / "config.json").is_file():
        raise UserError(f"model.name={name}: {Path(where) / 'config.json'} not found; a local-dir: model is a "
                        "folder written by timm.models.save_for_hf (config.json and the weights)")
    if source in SOURCES:
        return
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


def timm_source(model: nn.Module) -> dict:
    """What rebuilds `model` without its name's source: timm's architecture and the resolved pretrained config
    (an `hf-hub:` name downloads config.json even for pretrained=False; a `local-dir:` folder may be gone).
    Plain values, as a checkpoint (torch.load(weights_only=True)) and a package's JSON store them."""
    cfg = dict(model.pretrained_cfg)
    cfg.pop("file", None)  # the local folder it came from: meaningless on another machine
    plain = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}
    return {"architecture": cfg["architecture"], "pretrained_cfg": plain}


def create_model(cfg: ModelConfig, num_classes: int, in_chans: int, pretrained: bool | None = None,
                 source: dict | None = None) -> nn.Module:
    """Build `cfg.name` with a `num_classes` head and `in_chans` input channels.

    `pretrained=False` skips any weight loading (used when a fold checkpoint is loaded right after).
    `source` (`timm_source` of the model the weights came from, as a checkpoint stores it) rebuilds its
    architecture with its pretrained config and no weights, reaching neither the hub nor a local folder.
    """
    if source is not None:
        return _create(source["architecture"], False, {**_kwargs(cfg, num_classes, in_chans),
                                                       "pretrained_cfg": source["pretrained_cfg"]})
    _check_name(cfg.name)
    kwargs = _kwargs(cfg, num_classes, in_chans)
    want_weights = (cfg.pretrained or cfg.pretrained_file is not None) if pretrained is None else pretrained
    if want_weights and cfg.pretrained_file is not None:
        return _from_file(cfg, kwargs)
    if want_weights:
        return _from_timm(cfg, kwargs)
    return _create(cfg.name, False, kwargs)


def _kwargs(cfg: ModelConfig, num_classes: int, in_chans: int) -> dict:
    kwargs: dict = {"num_classes": num_classes, "in_chans": in_chans,
                    "drop_rate": cfg.drop_rate, "drop_path_rate": cfg.drop_path_rate}
    if cfg.img_size is not None:
        kwargs["img_size"] = cfg.img_size
    if cfg.dynamic_img_size:
        kwargs["dynamic_img_size"] = True
    return kwargs


def _from_file(cfg: ModelConfig, kwargs: dict) -> nn.Module:
    """model.pretrained_file through timm's own loader."""
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


def _from_timm(cfg: ModelConfig, kwargs: dict) -> nn.Module:
    """timm's pretrained weights (the HF hub, or its cache)."""
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


def preprocessing(model: nn.Module, cfg: ModelConfig, in_chans: int) -> Preprocessing:
    """Input size (model.img_size, else the model's), interpolation and normalisation from the model (EVA-02
    uses CLIP statistics)."""
    resolved = timm.data.resolve_model_data_config(model)
    size = cfg.img_size or resolved["input_size"][-1]
    mean, std = tuple(resolved["mean"]), tuple(resolved["std"])
    if in_chans == 1:  # timm sums the stem's RGB weights: a gray image stands for equal R, G, B
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    return Preprocessing(size, resolved.get("interpolation", "bilinear"), mean, std, in_chans)
