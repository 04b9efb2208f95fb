"""A model's weights as the list of NumPy arrays Flower sends, in ``state_dict`` order, and back."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from metaclinic.federated.config import FederationError


def model_arrays(model: nn.Module) -> list[np.ndarray]:
    """Every entry of ``model.state_dict()`` (weights and buffers, e.g. the temperature) as an array."""
    return [t.detach().cpu().numpy().copy() for t in model.state_dict().values()]


def load_model_arrays(model: nn.Module, arrays: list[np.ndarray]) -> None:
    """Loads arrays made by :func:`model_arrays` of a model of the same config (same order and shapes)."""
    state = model.state_dict()
    if len(arrays) != len(state):
        raise FederationError(
            f"received {len(arrays)} arrays for a model with {len(state)} state entries: the server and this "
            "site built different models (give every part the same fit_config and overrides)"
        )
    loaded = {}
    for (key, tensor), array in zip(state.items(), arrays, strict=True):
        if tuple(array.shape) != tuple(tensor.shape):
            raise FederationError(
                f"received shape {tuple(array.shape)} for {key}, this model has {tuple(tensor.shape)}: the "
                "server and this site built different models (same fit_config, overrides and features?)"
            )
        loaded[key] = torch.from_numpy(np.array(array)).to(tensor.dtype)
    model.load_state_dict(loaded)
