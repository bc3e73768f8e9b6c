"""MSDeformAttn pixel decoder: deformable-attention encoder over res3..res5, then an FPN step to 1/4."""

import keras
from keras import ops

from model.layers import Linear, c2_xavier_init, group_norm, layer_norm, register, resize_bilinear
from model.ms_deform_attn import MultiScaleDeformableAttention
from model.position_encoding import sine_position_encoding

ENCODER_LEVELS = ("res5", "res4", "res3")  # the official order: index 0 is stride 32


@register
class DeformableEncoderLayer(keras.layers.Layer):
    """Post-norm encoder layer: `x = LN(x + MSDA(x + pos, ref, x))`, `x = LN(x + W2 relu(W1 x))`.

    Args:
        hidden_dim: int. num_heads: int. num_levels: int. num_points: int. ffn_dim: int.

    Call: `x` (B, L, C), `pos` (1, L, C), `reference_points` (1, L, 2), `spatial_shapes` -> (B, L, C).
        With training=True the feed-forward block is rematerialised (`keras.remat`): its (B, L, ffn_dim)
        activations are recomputed in the backward pass instead of kept, 0.2-0.4 GB off the peak of an R50
        step at 2 x 512x512 at no measurable cost in time (`python -m bench.memory_train_step`).
        `recompute = True` (train.recompute_encoder) rematerialises the whole layer when training: only its
        input is kept for the backward pass, for a slower step.
    """

    recompute = False  # a training switch, not part of the architecture (not in get_config)

    def __init__(self, *, hidden_dim, num_heads, num_levels, num_points, ffn_dim, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.ffn_dim = ffn_dim
        kw = {"dtype": self.dtype_policy}
        self.self_attn = MultiScaleDeformableAttention(
            hidden_dim=hidden_dim,
            num_heads=num_heads,
            num_levels=num_levels,
            num_points=num_points,
            name="self_attn",
            **kw,
        )
        self.norm1 = layer_norm("norm1", self.dtype_policy)
        self.linear1 = Linear(ffn_dim, kernel_initializer="glorot_uniform", name="linear1", **kw)
        self.linear2 = Linear(hidden_dim, kernel_initializer="glorot_uniform", name="linear2", **kw)
        self.norm2 = layer_norm("norm2", self.dtype_policy)

    def build(self, x_shape):
        tokens = (None, None, self.hidden_dim)
        self.self_attn.build(tokens)
        self.norm1.build(tokens)
        self.linear1.build(tokens)
        self.linear2.build((None, None, self.ffn_dim))
        self.norm2.build(tokens)

    def call(self, x, pos, reference_points, spatial_shapes, training=None):
        if training and self.recompute:
            return keras.remat(lambda x, pos, ref: self._layer(x, pos, ref, spatial_shapes, False))(
                x, pos, reference_points
            )
        return self._layer(x, pos, reference_points, spatial_shapes, training)

    def _layer(self, x, pos, reference_points, spatial_shapes, training):
        x = self.norm1(
            x + self.self_attn(x + pos, reference_points, x, spatial_shapes=spatial_shapes, training=training)
        )
        feed_forward = keras.remat(self._feed_forward) if training else self._feed_forward
        return feed_forward(x)

    def _feed_forward(self, x):
        return self.norm2(x + self.linear2(ops.relu(self.linear1(x))))

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_dim": self.hidden_dim,
            "num_heads": self.num_heads,
            "num_levels": self.num_levels,
            "num_points": self.num_points,
            "ffn_dim": self.ffn_dim,
        }


@register
class MSDeformAttnPixelDecoder(keras.layers.Layer):
    """Pixel decoder of Mask2Former.

    Args:
        in_channels: dict with the channels of `res2`..`res5`.
        conv_dim: int, width of the decoder (256).
        mask_dim: int, channels of the mask features (256).
        num_heads: int. num_points: int. encoder_layers: int. encoder_ffn_dim: int.
        group_norm_groups: int.

    Call: dict `res2`..`res5` (B, H/s, W/s, C_s) -> (mask_features (B, H/4, W/4, mask_dim),
    multi_scale_features [ (B, H/32, W/32, conv_dim), (B, H/16, ..), (B, H/8, ..) ]).
    """

    def __init__(
        self,
        *,
        in_channels,
        conv_dim=256,
        mask_dim=256,
        num_heads=8,
        num_points=4,
        encoder_layers=6,
        encoder_ffn_dim=1024,
        group_norm_groups=32,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.in_channels = dict(in_channels)
        self.conv_dim = conv_dim
        self.mask_dim = mask_dim
        self.num_heads = num_heads
        self.num_points = num_points
        self.encoder_layers = encoder_layers
        self.encoder_ffn_dim = encoder_ffn_dim
        self.group_norm_groups = group_norm_groups
        kw = {"dtype": self.dtype_policy}
        levels = len(ENCODER_LEVELS)
        self.input_proj_convs = [
            keras.layers.Conv2D(conv_dim, 1, kernel_initializer="glorot_uniform", name=f"input_proj_{i}_conv", **kw)
            for i in range(levels)
        ]
        self.input_proj_norms = [
            group_norm(group_norm_groups, f"input_proj_{i}_norm", self.dtype_policy) for i in range(levels)
        ]
        self.encoder = [
            DeformableEncoderLayer(
                hidden_dim=conv_dim,
                num_heads=num_heads,
                num_levels=levels,
                num_points=num_points,
                ffn_dim=encoder_ffn_dim,
                name=f"encoder_layer_{i}",
                **kw,
            )
            for i in range(encoder_layers)
        ]
        self.adapter_1 = keras.layers.Conv2D(
            conv_dim, 1, use_bias=False, kernel_initializer=c2_xavier_init(), name="adapter_1", **kw
        )
        self.adapter_1_norm = group_norm(group_norm_groups, "adapter_1_norm", self.dtype_policy)
        self.layer_1 = keras.layers.Conv2D(
            conv_dim, 3, padding="same", use_bias=False, kernel_initializer=c2_xavier_init(), name="layer_1", **kw
        )
        self.layer_1_norm = group_norm(group_norm_groups, "layer_1_norm", self.dtype_policy)
        self.mask_features = keras.layers.Conv2D(
            mask_dim, 1, kernel_initializer=c2_xavier_init(), name="mask_features", **kw
        )

    def set_recompute(self, recompute: bool) -> None:
        """Whether each encoder layer is recomputed in the backward pass when training (train.recompute_encoder)."""
        for layer in self.encoder:
            layer.recompute = recompute

    def build(self, features_shape):
        maps = (None, None, None, self.conv_dim)
        self.level_embed = self.add_weight(
            name="level_embed",
            shape=(len(ENCODER_LEVELS), self.conv_dim),
            initializer=keras.initializers.RandomNormal(stddev=1.0),
        )
        for conv, norm, level in zip(self.input_proj_convs, self.input_proj_norms, ENCODER_LEVELS, strict=True):
            conv.build((None, None, None, self.in_channels[level]))
            norm.build(maps)
        for layer in self.encoder:
            layer.build((None, None, self.conv_dim))
        self.adapter_1.build((None, None, None, self.in_channels["res2"]))
        self.adapter_1_norm.build(maps)
        self.layer_1.build(maps)
        self.layer_1_norm.build(maps)
        self.mask_features.build(maps)

    def call(self, features):
        batch = ops.shape(features["res2"])[0]
        tokens, positions, references, spatial_shapes = [], [], [], []
        for level_index, level in enumerate(ENCODER_LEVELS):
            x = self.input_proj_norms[level_index](self.input_proj_convs[level_index](features[level]))  # (B, h, w, C)
            height, width = ops.shape(x)[1:3]
            spatial_shapes.append((height, width))
            tokens.append(ops.reshape(x, (batch, height * width, self.conv_dim)))
            pos = sine_position_encoding(height, width, self.conv_dim // 2, dtype=x.dtype)
            pos = ops.reshape(pos, (1, height * width, self.conv_dim)) + ops.cast(
                self.level_embed[level_index], x.dtype
            )
            positions.append(pos)
            references.append(_pixel_centres(height, width, x.dtype))
        x = ops.concatenate(tokens, axis=1)  # (B, sum hw, C)
        pos = ops.concatenate(positions, axis=1)
        reference_points = ops.concatenate(references, axis=0)[None]  # (1, sum hw, 2)
        for layer in self.encoder:
            x = layer(x, pos, reference_points, spatial_shapes=spatial_shapes)

        multi_scale_features, start = [], 0
        for height, width in spatial_shapes:
            multi_scale_features.append(ops.reshape(x[:, start : start + height * width], (batch, height, width, -1)))
            start = start + height * width

        lateral = self.adapter_1_norm(self.adapter_1(features["res2"]))
        size = ops.shape(lateral)[1:3]
        fpn = ops.relu(self.layer_1_norm(self.layer_1(lateral + resize_bilinear(multi_scale_features[-1], size))))
        return self.mask_features(fpn), multi_scale_features

    def get_config(self):
        return {
            **super().get_config(),
            "in_channels": self.in_channels,
            "conv_dim": self.conv_dim,
            "mask_dim": self.mask_dim,
            "num_heads": self.num_heads,
            "num_points": self.num_points,
            "encoder_layers": self.encoder_layers,
            "encoder_ffn_dim": self.encoder_ffn_dim,
            "group_norm_groups": self.group_norm_groups,
        }


def _pixel_centres(height, width, dtype):
    """(h * w, 2) normalised (x, y) centres of a row-major grid: ((j + 0.5) / w, (i + 0.5) / h)."""
    ys = (ops.cast(ops.arange(height), dtype) + 0.5) / ops.cast(height, dtype)
    xs = (ops.cast(ops.arange(width), dtype) + 0.5) / ops.cast(width, dtype)
    grid_x = ops.broadcast_to(xs[None, :], (height, width))
    grid_y = ops.broadcast_to(ys[:, None], (height, width))
    return ops.reshape(ops.stack([grid_x, grid_y], axis=-1), (height * width, 2))
