"""detectron2 ResNet (stride in the 3x3 conv, frozen batch norm), channels-last.

A backbone is any layer that maps a normalised image (B, H, W, 3) to a dict of named feature maps
and describes them with `output_shape()` -> {name: ShapeSpec(channels, stride)}, as detectron2's
`Backbone`: `ResNet` here and `SwinTransformer` (model/swin.py). Mask2Former needs res2..res5.

Layers here match detectron2's `build_resnet_backbone` with `STRIDE_IN_1X1: False` and
`NORM: FrozenBN`, the backbone of the official Mask2Former R50/R101 models. Convolutions pad
explicitly and symmetrically (as PyTorch), never with Keras' asymmetric "same".
"""

from typing import NamedTuple

import keras
from keras import ops

from model.layers import register


class ShapeSpec(NamedTuple):
    """One named backbone output: channels and stride (detectron2 `ShapeSpec`)."""

    channels: int
    stride: int


@register
class FrozenBatchNorm(keras.layers.Layer):
    """Batch norm with fixed statistics and affine: `(x - mean) / sqrt(var + eps) * gamma + beta`.

    All four vectors are non-trainable (detectron2 `FrozenBatchNorm2d`).

    Args:
        epsilon: float, added to the variance (torch default 1e-5).

    Call: `x` (..., C) -> (..., C).
    """

    def __init__(self, *, epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def build(self, input_shape):
        channels = input_shape[-1]
        for name, init in (("gamma", "ones"), ("beta", "zeros"), ("moving_mean", "zeros"), ("moving_variance", "ones")):
            setattr(self, name, self.add_weight(name=name, shape=(channels,), initializer=init, trainable=False))

    def call(self, x):
        scale = self.gamma * ops.rsqrt(self.moving_variance + self.epsilon)
        shift = self.beta - self.moving_mean * scale
        return x * ops.cast(scale, x.dtype) + ops.cast(shift, x.dtype)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


@register
class ConvNorm(keras.layers.Layer):
    """Conv (no bias, symmetric zero padding k//2) followed by frozen batch norm.

    Args:
        filters: int, output channels.
        kernel_size: int, square kernel.
        strides: int.

    Call: `x` (B, H, W, Cin) -> (B, ceil(H/strides), ceil(W/strides), filters).
    """

    def __init__(self, *, filters, kernel_size, strides=1, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.conv = keras.layers.Conv2D(
            filters,
            kernel_size,
            strides=strides,
            padding="valid",
            use_bias=False,
            # detectron2 c2_msra_fill: kaiming normal, fan_out, ReLU gain.
            kernel_initializer=keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal"),
            dtype=self.dtype_policy,
            name="conv",
        )
        self.norm = FrozenBatchNorm(dtype=self.dtype_policy, name="norm")

    def build(self, input_shape):
        self.conv.build(input_shape)
        self.norm.build((*input_shape[:-1], self.filters))

    def call(self, x):
        pad = self.kernel_size // 2
        if pad:
            x = ops.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        return self.norm(self.conv(x))

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
        }


@register
class BottleneckBlock(keras.layers.Layer):
    """1x1 -> 3x3 (stride here) -> 1x1, plus a projection shortcut when shapes change.

    Args:
        out_channels: int, block output channels.
        bottleneck_channels: int, width of the 1x1/3x3 convs.
        strides: int, stride of the 3x3 conv and of the shortcut.
        use_shortcut_projection: bool, whether the shortcut is a 1x1 conv + norm.

    Call: `x` (B, H, W, Cin) -> (B, H/strides, W/strides, out_channels).
    """

    def __init__(self, *, out_channels, bottleneck_channels, strides=1, use_shortcut_projection=False, **kwargs):
        super().__init__(**kwargs)
        self.out_channels = out_channels
        self.bottleneck_channels = bottleneck_channels
        self.strides = strides
        self.use_shortcut_projection = use_shortcut_projection
        kw = {"dtype": self.dtype_policy}
        self.conv1 = ConvNorm(filters=bottleneck_channels, kernel_size=1, name="conv1", **kw)
        self.conv2 = ConvNorm(filters=bottleneck_channels, kernel_size=3, strides=strides, name="conv2", **kw)
        self.conv3 = ConvNorm(filters=out_channels, kernel_size=1, name="conv3", **kw)
        self.shortcut = (
            ConvNorm(filters=out_channels, kernel_size=1, strides=strides, name="shortcut", **kw)
            if use_shortcut_projection
            else None
        )

    def build(self, input_shape):
        inner = (*input_shape[:-1], self.bottleneck_channels)
        self.conv1.build(input_shape)
        self.conv2.build(inner)
        self.conv3.build(inner)
        if self.shortcut is not None:
            self.shortcut.build(input_shape)

    def call(self, x):
        identity = x if self.shortcut is None else self.shortcut(x)
        y = ops.relu(self.conv1(x))
        y = ops.relu(self.conv2(y))
        y = self.conv3(y)
        return ops.relu(y + identity)

    def get_config(self):
        return {
            **super().get_config(),
            "out_channels": self.out_channels,
            "bottleneck_channels": self.bottleneck_channels,
            "strides": self.strides,
            "use_shortcut_projection": self.use_shortcut_projection,
        }


@register
class ResNet(keras.layers.Layer):
    """detectron2 ResNet with a basic stem, returning res2..res5.

    Args:
        stage_blocks: sequence of 4 ints, bottleneck blocks per stage ((3, 4, 6, 3) for R50).
        stem_channels: int, stem conv output channels (64).
        res2_channels: int, res2 output channels (256); doubles per stage, bottlenecks are a quarter.

    Call: `x` (B, H, W, 3) normalised image -> dict `res2`..`res5` with strides 4, 8, 16, 32 and
    channels res2_channels * (1, 2, 4, 8).
    """

    def __init__(self, *, stage_blocks=(3, 4, 6, 3), stem_channels=64, res2_channels=256, **kwargs):
        super().__init__(**kwargs)
        self.stage_blocks = tuple(stage_blocks)
        self.stem_channels = stem_channels
        self.res2_channels = res2_channels
        self.stem = ConvNorm(filters=stem_channels, kernel_size=7, strides=2, dtype=self.dtype_policy, name="stem")
        self.stages = []
        for stage_index, num_blocks in enumerate(self.stage_blocks):
            out_channels = res2_channels * 2**stage_index
            blocks = [
                BottleneckBlock(
                    out_channels=out_channels,
                    bottleneck_channels=out_channels // 4,
                    strides=2 if (block_index == 0 and stage_index > 0) else 1,
                    use_shortcut_projection=block_index == 0,
                    dtype=self.dtype_policy,
                    name=f"res{stage_index + 2}_{block_index}",
                )
                for block_index in range(num_blocks)
            ]
            self.stages.append(blocks)

    def output_shape(self):
        """Name -> ShapeSpec(channels, stride) of res2..res5 (detectron2 `Backbone.output_shape`)."""
        return {f"res{i + 2}": ShapeSpec(self.res2_channels * 2**i, 4 * 2**i) for i in range(4)}

    @property
    def out_channels(self):
        """Channels of res2..res5."""
        return {name: spec.channels for name, spec in self.output_shape().items()}

    def build(self, input_shape):
        batch = input_shape[0]
        self.stem.build(input_shape)
        channels = self.stem_channels
        for blocks in self.stages:
            for block in blocks:
                block.build((batch, None, None, channels))
                channels = block.out_channels

    def call(self, x, training=None):
        x = ops.relu(self.stem(x))
        # Max pool 3x3/2 with padding 1: zero padding equals PyTorch's -inf padding after a ReLU.
        x = ops.max_pool(ops.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), pool_size=3, strides=2, padding="valid")
        features = {}
        for stage_index, blocks in enumerate(self.stages):
            for block in blocks:
                x = block(x)
            features[f"res{stage_index + 2}"] = x
        return features

    def get_config(self):
        return {
            **super().get_config(),
            "stage_blocks": self.stage_blocks,
            "stem_channels": self.stem_channels,
            "res2_channels": self.res2_channels,
        }
