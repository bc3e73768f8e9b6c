"""Mask2Former in Keras 3. Importing this package registers every layer for `keras.saving.load_model`."""

from model.backbone import BottleneckBlock, ConvNorm, FrozenBatchNorm, ResNet, ShapeSpec
from model.mask2former import Mask2Former, build_backbone, build_model
from model.ms_deform_attn import MultiScaleDeformableAttention
from model.pixel_decoder import DeformableEncoderLayer, MSDeformAttnPixelDecoder
from model.swin import PatchMerging, SwinBlock, SwinTransformer, WindowAttention
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
    "PatchMerging",
    "ResNet",
    "ShapeSpec",
    "SwinBlock",
    "SwinTransformer",
    "WindowAttention",
    "build_backbone",
    "build_model",
]
