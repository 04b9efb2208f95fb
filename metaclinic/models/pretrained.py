"""Any torchvision or timm network as a backbone, with weights from a local file (nothing is downloaded)."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaclinic.errors import MetaclinicError
from metaclinic.models.normalization import EpisodeNorm

log = logging.getLogger("metaclinic")

PretrainedNorm = Literal["support", "running"]
HEADS = ("fc", "classifier", "heads", "head")  # torchvision's names for the classification head
SHOWN = 5  # keys listed in an error message


class BackboneError(MetaclinicError, ValueError):
    """A backbone's configuration or weights file does not fit; the message names what to change."""


class MissingPackageError(MetaclinicError, ImportError):
    """An optional package a backbone needs is not installed; the message says what to install."""


class PretrainedBackbone(nn.Module):
    """A ``torchvision.models`` or ``timm`` network without its classification head, as an embedding.

    ``name`` is ``"torchvision:<model>"`` (any name of ``torchvision.models.list_models()``) or
    ``"timm:<model>"``. The network is built untrained, never with torchvision's weight enums or timm's
    ``pretrained=True``, so nothing is ever downloaded (the machines that hold patient data are often
    offline); ``weights`` loads a local state dict into it instead. Its head goes (timm: ``num_classes=0``;
    torchvision: the last ``nn.Linear`` of ``fc``, ``classifier``, ``heads`` or ``head`` becomes
    ``nn.Identity``) and ``out_features`` is measured by one forward pass on ``input_shape``.

    Normalisation: ``norm="support"`` (the default, as in the rest of metaclinic) replaces every
    ``BatchNorm2d`` by an :class:`~metaclinic.models.normalization.EpisodeNorm` with the same affine weights,
    so every layer normalises an episode with its support set's moments and a query's embedding depends
    only on the support set and the query; the pretrained running averages are dropped. ``norm="running"``
    keeps the network's batch norm as it is: in training mode it normalises with the statistics of the
    current batch (the whole meta-batch, queries included), in eval mode with its running averages
    (inductive, the statistics the weights were trained with).

    Args:
        input_shape: ``(channels, height, width)`` of one image; the command line fills it in from the data.
            One-channel images are repeated to the three channels an RGB network expects.
        name: ``"torchvision:resnet18"``, ``"timm:resnet18"``, ...
        weights: path of a local state dict (``.pt``/``.pth``, read with ``torch.load(weights_only=True)``,
            or ``.safetensors``) for the network with or without its head; ``None`` keeps the random
            initialisation. Loading is strict apart from the head's keys, which are ignored.
        norm: ``"support"`` or ``"running"`` (see above).
        resize: resize images bilinearly to ``resize x resize`` inside ``forward``, for networks whose
            strides leave too little of a small image (28x28 MedMNIST into an ImageNet ResNet: 1x1 maps).
        options: further keyword arguments of the network's constructor (e.g. ``{"drop_rate": 0.1}`` for
            timm, ``{"aux_logits": False}`` for torchvision's GoogLeNet).
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int] = (3, 28, 28),
        name: str = "torchvision:resnet18",
        weights: str | None = None,
        norm: PretrainedNorm = "support",
        resize: int | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise BackboneError(
                f"PretrainedBackbone takes images (channels, height, width), got input_shape={input_shape}"
            )
        if norm not in ("support", "running"):
            raise BackboneError(f"PretrainedBackbone norm must be 'support' or 'running', got {norm!r}")
        if resize is not None and resize < 1:
            raise BackboneError(f"resize must be a positive image size or None, got {resize}")
        self.input_shape, self.name, self.norm, self.resize = tuple(input_shape), name, norm, resize
        self.network, head_prefixes = build_headless(name, dict(options or {}))
        expected = first_conv_channels(self.network)
        channels = input_shape[0]
        if expected is not None and channels not in (expected, 1):
            raise BackboneError(
                f"{name} expects {expected}-channel images, got input_shape={input_shape} "
                "(only 1-channel images are repeated to fit)"
            )
        self.repeat_channels = expected if expected is not None and channels == 1 and expected != 1 else 1
        if weights is not None:
            load_weights(self.network, Path(weights), head_prefixes, name)
        if norm == "support":
            replace_batch_norms(self.network)
        self.out_features = self._measure_out_features()

    def _measure_out_features(self) -> int:
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                out = self(torch.zeros(2, *self.input_shape))
        except (RuntimeError, AssertionError, ValueError) as error:  # torch, torchvision and timm say so
            raise BackboneError(
                f"{self.name} does not take input_shape={self.input_shape} images"
                f"{f' resized to {self.resize}' if self.resize else ''} ({error}); set resize to a size it "
                "takes"
            ) from error
        finally:
            self.train(was_training)
        if out.dim() != 2:
            shape = tuple(out.shape[1:])
            raise BackboneError(f"{self.name} without its head gives {shape} per image, not a vector")
        return out.shape[1]

    def forward(self, x: Tensor) -> Tensor:
        """``(batch, *input_shape)`` -> ``(batch, out_features)``."""
        if self.resize is not None and tuple(x.shape[-2:]) != (self.resize, self.resize):
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        if self.repeat_channels > 1:  # after resizing, which then works on one channel, not three
            x = x.expand(-1, self.repeat_channels, -1, -1)
        return self.network(x)


def build_headless(name: str, options: dict[str, Any]) -> tuple[nn.Module, tuple[str, ...]]:
    """The untrained network ``name`` without its head, and the state-dict prefixes of the head it had."""
    library, _, model = name.partition(":")
    if library == "torchvision" and model:
        import torchvision

        if model not in torchvision.models.list_models():
            raise BackboneError(
                f"torchvision has no model {model!r} (name={name!r}); see torchvision.models.list_models()"
            )
        network = torchvision.models.get_model(model, weights=None, **options)
        return network, (remove_torchvision_head(network, name),)
    if library == "timm" and model:
        try:
            timm = importlib.import_module("timm")
        except ImportError as error:
            raise MissingPackageError(
                f"backbone {name!r} needs timm, which is not installed: pip install timm"
            ) from error
        if not timm.is_model(model):
            raise BackboneError(f"timm has no model {model!r} (name={name!r}); see timm.list_models()")
        network = timm.create_model(model, pretrained=False, num_classes=0, **options)
        classifier = getattr(network, "pretrained_cfg", {}).get("classifier") or ()
        return network, (classifier,) if isinstance(classifier, str) else tuple(classifier)
    raise BackboneError(f"backbone name must be 'torchvision:<model>' or 'timm:<model>', got {name!r}")


def remove_torchvision_head(network: nn.Module, name: str) -> str:
    """Replaces the last ``nn.Linear`` of the network's head by ``nn.Identity``; returns its module path.

    Only the final linear layer goes: what precedes it in the head (ConvNeXt's layer norm and flatten,
    MobileNetV3's hidden layer, VGG's fc6 and fc7) is part of the embedding, as in timm's ``num_classes=0``.
    """
    for attribute in HEADS:
        head = getattr(network, attribute, None)
        if isinstance(head, nn.Linear):
            setattr(network, attribute, nn.Identity())
            return attribute
        if isinstance(head, nn.Module):
            linears = [path for path, module in head.named_modules() if isinstance(module, nn.Linear)]
            if linears:
                parent_path, _, child = linears[-1].rpartition(".")
                parent = head.get_submodule(parent_path) if parent_path else head
                setattr(parent, child, nn.Identity())
                return f"{attribute}.{linears[-1]}"
    raise BackboneError(f"found no linear classification head ({', '.join(HEADS)}) to remove in {name}")


def first_conv_channels(network: nn.Module) -> int | None:
    """Input channels of the network's first convolution (the stem), or ``None`` without one."""
    for module in network.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    return None


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """The tensors of a ``.safetensors`` file or of a state dict saved with ``torch.save``."""
    if not path.is_file():
        raise BackboneError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as error:
            raise MissingPackageError(
                f"weights file {path} is in the safetensors format, which needs: pip install safetensors"
            ) from error
        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling errors of every kind: the file is not a plain state dict
        raise BackboneError(f"could not read weights file {path} as a state dict: {error}") from error
    if isinstance(state, dict) and not all(isinstance(v, Tensor) for v in state.values()):
        for key in ("state_dict", "model"):  # a training checkpoint that holds the state dict
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise BackboneError(f"weights file {path} holds no state dict (a mapping of names to tensors)")
    return state


def load_weights(network: nn.Module, path: Path, head_prefixes: tuple[str, ...], name: str) -> None:
    """Loads ``path`` into ``network``: every key must match in name and shape, except the removed head's."""
    state = read_state_dict(path)
    own = network.state_dict()
    head = [k for k in state if k not in own and any(k.startswith(f"{p}.") for p in head_prefixes if p)]
    if head:
        log.info("%s: ignoring the classification head's weights in %s: %s", name, path, ", ".join(head))
    state = {k: v for k, v in state.items() if k not in head}
    # Batch norm's step counter (absent from old files) only matters for momentum=None: keep the network's.
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} (file {tuple(v.shape)}, network {tuple(own[k].shape)})"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    found = {"missing keys": missing, "unexpected keys": unexpected, "shape mismatches": mismatched}
    problems = [f"{label}: {listed(keys)}" for label, keys in found.items() if keys]
    if problems:
        raise BackboneError(f"weights file {path} does not fit {name}: {'; '.join(problems)}")
    network.load_state_dict({**{k: v for k, v in own.items() if k not in state}, **state}, strict=True)


def listed(keys: list[str]) -> str:
    """The first few ``keys``, and how many more there are."""
    more = f" and {len(keys) - SHOWN} more" if len(keys) > SHOWN else ""
    return ", ".join(keys[:SHOWN]) + more


def replace_batch_norms(network: nn.Module) -> None:
    """Replaces every ``BatchNorm2d`` of ``network`` by an ``EpisodeNorm`` with its affine weights.

    timm's ``BatchNormAct2d`` (batch norm with its activation and drop inside) becomes the episode norm
    followed by that drop and activation; another subclass of ``BatchNorm2d`` raises, since what it adds is
    unknown.
    """
    for module in list(network.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                setattr(module, child_name, episode_norm_like(child))


def episode_norm_like(batch_norm: nn.BatchNorm2d) -> nn.Module:
    norm = EpisodeNorm(batch_norm.num_features, mode="support", eps=batch_norm.eps)
    with torch.no_grad():
        if batch_norm.affine:
            norm.weight.copy_(batch_norm.weight)
            norm.bias.copy_(batch_norm.bias)
        else:  # no affine weights to learn: keep the identity
            norm.weight.requires_grad_(False)
            norm.bias.requires_grad_(False)
    if type(batch_norm) is nn.BatchNorm2d:
        return norm
    if type(batch_norm).__name__ == "BatchNormAct2d":  # timm: batch norm, then drop, then activation
        return nn.Sequential(norm, batch_norm.drop, batch_norm.act)
    raise BackboneError(
        f"norm='support' cannot replace {type(batch_norm).__name__}, a batch norm with more to it; "
        "use norm='running'"
    )
