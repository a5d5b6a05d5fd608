"""timm models by name: random init, timm's pretrained weights, or a local weight file through timm's loader;
and foldvision's own checkpoints, read so that a cut-short or foreign file is one line, never a torch traceback."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import timm
import torch
from torch import nn

from foldvision.config import ModelConfig
from foldvision.errors import UserError, did_you_mean


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


def data_config(model: nn.Module, cfg: ModelConfig, in_chans: int) -> dict:
    """Input size, interpolation and normalisation from the model (EVA-02 uses CLIP statistics)."""
    resolved = timm.data.resolve_model_data_config(model)
    size = cfg.img_size or resolved["input_size"][-1]
    mean, std = tuple(resolved["mean"]), tuple(resolved["std"])
    if in_chans == 1:  # timm sums the stem's RGB weights: a gray image stands for equal R, G, B
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    return {"size": size, "interpolation": resolved.get("interpolation", "bilinear"), "mean": mean, "std": std}


class CheckpointError(UserError):
    """A checkpoint that cannot be used: cut short, not a torch file, or not foldvision's. The caller adds
    what to do (set it aside and start over, or re-train the fold)."""

    def __init__(self, path: Path, problem: str):
        self.path, self.problem = Path(path), problem
        super().__init__(f"{path}: {problem}")


def _first_sentence(error: BaseException) -> str:
    """The gist of a library's error (torch's miniz and unpickling messages run to paragraphs)."""
    text = (str(error).strip().splitlines() or [""])[0].split(". ")[0]
    return f"{type(error).__name__}: {text[:100]}" if text else type(error).__name__


def read_checkpoint(path: Path, keys: Iterable[str], map_location: str | torch.device = "cpu") -> dict:
    """A checkpoint foldvision wrote (tensors and plain values only), checked to hold `keys`.

    Raises:
        CheckpointError: the file is unreadable (a kill or a full disk cut it short; random bytes; a pickle of
            arbitrary objects) or is not a dict holding every key in `keys`.
    """
    try:
        content = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as e:
        raise CheckpointError(path, f"cannot be read ({e.strerror or e})") from None
    except Exception as e:  # noqa: BLE001 - miniz, unpickling, EOF...: any of them means a damaged file
        raise CheckpointError(path, f"cut short or not a torch checkpoint ({_first_sentence(e)})") from None
    if not isinstance(content, dict):
        raise CheckpointError(path, f"not a foldvision checkpoint (it holds a {type(content).__name__}, not a dict)")
    missing = [key for key in keys if key not in content]
    if missing:
        raise CheckpointError(path, f"not a foldvision checkpoint (no {', '.join(repr(k) for k in missing)})")
    return content


def load_weights(model: nn.Module, weights: dict, path: Path) -> None:
    """`model.load_state_dict(weights)`; weights of another architecture are a CheckpointError naming `path`."""
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise CheckpointError(path, f"its weights do not fit the model ({_first_sentence(e)})") from None
