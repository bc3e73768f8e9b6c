"""Mask2Former in Keras 3. Importing this package registers every layer for `keras.saving.load_model`."""

from model.backbone import BottleneckBlock, ConvNorm, FrozenBatchNorm, ResNet
from model.mask2former import Mask2Former, build_model
from model.ms_deform_attn import MultiScaleDeformableAttention
from model.pixel_decoder import DeformableEncoderLayer, MSDeformAttnPixelDecoder
from model.transformer_decoder import DecoderLayer, MaskedAttentionDecoder, MultiHeadAttention

__all__ = [
    "BottleneckBlock",
    "ConvNorm",
    "DecoderLayer",
    "DeformableEncoderLayer",
    "FrozenBatchNorm",
    "MSDeformAttnPixelDecoder",
    "Mask2Former",
    "MaskedAttentionDecoder",
    "MultiHeadAttention",
    "MultiScaleDeformableAttention",
    "ResNet",
    "build_model",
]
