"""Backbones: networks that map one example to an embedding vector (``out_features`` wide).

Every backbone takes the shape of one example as ``input_shape``; the command line links it to the data
module's ``example_shape``, so a config never repeats it.
"""

from metaclinic.models.conv4 import Conv4
from metaclinic.models.fcn1d import FCN1D as FCN1D
from metaclinic.models.mlp import MLP
from metaclinic.models.pretrained import PretrainedBackbone
from metaclinic.models.resnet12 import ResNet12

__all__ = ["MLP", "Conv4", "PretrainedBackbone", "ResNet12"]
