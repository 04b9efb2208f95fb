"""Backbones: networks that map one example to an embedding vector (``out_features`` wide)."""

from metaclinic.models.conv4 import Conv4

__all__ = ["Conv4"]
