"""Swin Transformer backbone as the official `D2SwinTransformer` (Mask2Former), channels-last.

Exactly the official computation (mask2former/modeling/backbone/swin.py): the image is padded to a
multiple of the patch, embedded by a 4x4/4 conv and a LayerNorm; every block pads its map to a
multiple of the window, keeps the window size and, on odd blocks, the half-window cyclic shift with
its -100 attention mask even when the map is smaller than the window; patch merging pads to even
sizes; each stage output goes through its own LayerNorm (`norm0..3`) and is returned as res2..res5.
"""

import keras
import numpy as np
from keras import ops

from model.backbone import ShapeSpec
from model.layers import Linear, layer_norm, register, torch_default_kernel_init


def relative_position_index(window_size):
    """(w*w, w*w) int32 index into the ((2w-1)^2, heads) bias table; a fixed buffer in the original."""
    coords = np.stack(np.meshgrid(np.arange(window_size), np.arange(window_size), indexing="ij")).reshape(2, -1)
    relative = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (window_size - 1)
    return (relative[:, :, 0] * (2 * window_size - 1) + relative[:, :, 1]).astype("int32")


def window_partition(x, window_size):
    """(B, Hp, Wp, C) with Hp, Wp multiples of the window -> (B * nW, w*w, C), windows row-major."""
    height, width, channels = ops.shape(x)[1], ops.shape(x)[2], ops.shape(x)[3]
    x = ops.reshape(x, (-1, height // window_size, window_size, width // window_size, window_size, channels))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))  # [B, nH, nW, w, w, C]
    return ops.reshape(x, (-1, window_size * window_size, channels))


def window_reverse(windows, window_size, height, width):
    """(B * nW, w*w, C) -> (B, height, width, C); the inverse of `window_partition`."""
    channels = ops.shape(windows)[-1]
    x = ops.reshape(windows, (-1, height // window_size, width // window_size, window_size, window_size, channels))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    return ops.reshape(x, (-1, height, width, channels))


def shifted_window_mask(height, width, window_size, shift_size, dtype):
    """(nW, w*w, w*w) additive mask of the shifted windows: -100 between tokens of different regions.

    The padded (height, width) map is cut into 3 x 3 regions ([0, size - w), [size - w, size - shift),
    [size - shift, size) per axis) that the cyclic shift brings next to each other.
    """

    def regions(size):
        index = ops.arange(size)
        return ops.cast(index >= size - window_size, "int32") + ops.cast(index >= size - shift_size, "int32")

    labels = regions(height)[:, None] * 3 + regions(width)[None, :]
    windows = window_partition(ops.cast(labels[None, :, :, None], dtype), window_size)[..., 0]  # [nW, w*w]
    different = ops.not_equal(windows[:, None, :], windows[:, :, None])
    return ops.where(different, ops.cast(-100.0, dtype), ops.cast(0.0, dtype))


@register
class WindowAttention(keras.layers.Layer):
    """Multi-head self-attention inside windows, with a learned relative position bias.

    Args:
        dim: int, channels C. num_heads: int. window_size: int w.

    Call: `x` (B * nW, w*w, C), optional `shift_mask` (nW, w*w, w*w) additive -> (B * nW, w*w, C).
    """

    def __init__(self, *, dim, num_heads, window_size, **kwargs):
        super().__init__(**kwargs)
        self.dim = dim
        self.num_heads = num_heads
        self.window_size = window_size
        kw = {"dtype": self.dtype_policy, "kernel_initializer": torch_default_kernel_init()}
        self.qkv = Linear(3 * dim, name="qkv", **kw)
        self.proj = Linear(dim, name="proj", **kw)
        self.relative_position_index = relative_position_index(window_size).reshape(-1)

    def build(self, input_shape):
        self.relative_position_bias_table = self.add_weight(
            name="relative_position_bias_table",
            shape=((2 * self.window_size - 1) ** 2, self.num_heads),
            initializer=keras.initializers.TruncatedNormal(stddev=0.02),
        )
        self.qkv.build((None, self.dim))
        self.proj.build((None, self.dim))

    def call(self, x, shift_mask=None):
        tokens = self.window_size**2
        head_dim = self.dim // self.num_heads
        qkv = ops.reshape(self.qkv(x), (-1, tokens, 3, self.num_heads, head_dim))
        qkv = ops.transpose(qkv, (2, 0, 3, 1, 4))  # [3, B*nW, heads, N, head_dim]
        q, k, v = qkv[0] * ops.cast(head_dim**-0.5, x.dtype), qkv[1], qkv[2]
        attn = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2)))  # [B*nW, heads, N, N]
        bias = ops.take(self.relative_position_bias_table, self.relative_position_index, axis=0)
        bias = ops.transpose(ops.reshape(bias, (tokens, tokens, self.num_heads)), (2, 0, 1))
        attn = attn + ops.cast(bias, attn.dtype)[None]
        if shift_mask is not None:
            num_windows = ops.shape(shift_mask)[0]
            attn = ops.reshape(attn, (-1, num_windows, self.num_heads, tokens, tokens))
            attn = attn + ops.cast(shift_mask, attn.dtype)[None, :, None]
            attn = ops.reshape(attn, (-1, self.num_heads, tokens, tokens))
        attn = ops.softmax(attn, axis=-1)
        out = ops.transpose(ops.matmul(attn, v), (0, 2, 1, 3))  # [B*nW, N, heads, head_dim]
        return self.proj(ops.reshape(out, (-1, tokens, self.dim)))

    def get_config(self):
        return {
            **super().get_config(),
            "dim": self.dim,
            "num_heads": self.num_heads,
            "window_size": self.window_size,
        }


@register
class SwinBlock(keras.layers.Layer):
    """LN -> (shifted) window attention -> residual; LN -> MLP (exact GELU) -> residual.

    Args:
        dim: int C. num_heads: int. window_size: int w. shift_size: int (0, or w // 2 on odd blocks).
        mlp_ratio: float, MLP hidden width over C. drop_path: float, stochastic-depth rate (training only).

    Call: `x` (B, H, W, C) -> (B, H, W, C).
    """

    def __init__(self, *, dim, num_heads, window_size=7, shift_size=0, mlp_ratio=4.0, drop_path=0.0, **kwargs):
        super().__init__(**kwargs)
        self.dim = dim
        self.num_heads = num_heads
        self.window_size = window_size
        self.shift_size = shift_size
        self.mlp_ratio = mlp_ratio
        self.drop_path = drop_path
        kw = {"dtype": self.dtype_policy}
        self.norm1 = layer_norm("norm1", self.dtype_policy)
        self.attn = WindowAttention(dim=dim, num_heads=num_heads, window_size=window_size, name="attn", **kw)
        self.norm2 = layer_norm("norm2", self.dtype_policy)
        self.fc1 = Linear(int(dim * mlp_ratio), kernel_initializer=torch_default_kernel_init(), name="fc1", **kw)
        self.fc2 = Linear(dim, kernel_initializer=torch_default_kernel_init(), name="fc2", **kw)
        # Stochastic depth (timm DropPath): the whole residual branch of a sample, scaled by 1 / keep.
        self.drop_path_layer = keras.layers.Dropout(drop_path, noise_shape=(None, 1, 1, 1), name="drop_path", **kw)

    def build(self, input_shape):
        self.norm1.build((None, self.dim))
        self.attn.build(None)
        self.norm2.build((None, self.dim))
        self.fc1.build((None, self.dim))
        self.fc2.build((None, int(self.dim * self.mlp_ratio)))

    def call(self, x, training=None):
        w, s = self.window_size, self.shift_size
        height, width = ops.shape(x)[1], ops.shape(x)[2]
        y = self.norm1(x)
        # Pad bottom/right to a multiple of the window (after the norm: padded tokens are zeros).
        y = ops.pad(y, ((0, 0), (0, (-height) % w), (0, (-width) % w), (0, 0)))
        padded_height, padded_width = ops.shape(y)[1], ops.shape(y)[2]
        shift_mask = None
        if s > 0:
            y = ops.roll(y, shift=(-s, -s), axis=(1, 2))
            shift_mask = shifted_window_mask(padded_height, padded_width, w, s, y.dtype)
        y = self.attn(window_partition(y, w), shift_mask=shift_mask)
        y = window_reverse(y, w, padded_height, padded_width)
        if s > 0:
            y = ops.roll(y, shift=(s, s), axis=(1, 2))
        x = x + self.drop_path_layer(y[:, :height, :width, :], training=training)
        y = self.fc1(self.norm2(x))
        # Exact GELU (nn.GELU) written out: TF's own is off by ~4e-9 in float64.
        y = self.fc2(0.5 * y * (1.0 + ops.erf(y * ops.cast(2**-0.5, y.dtype))))
        return x + self.drop_path_layer(y, training=training)

    def get_config(self):
        return {
            **super().get_config(),
            "dim": self.dim,
            "num_heads": self.num_heads,
            "window_size": self.window_size,
            "shift_size": self.shift_size,
            "mlp_ratio": self.mlp_ratio,
            "drop_path": self.drop_path,
        }


@register
class PatchMerging(keras.layers.Layer):
    """2x2 neighbours concatenated (pad to even sizes first), LayerNorm(4C), Linear(4C -> 2C, no bias).

    Args:
        dim: int, input channels C.

    Call: `x` (B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 2C).
    """

    def __init__(self, *, dim, **kwargs):
        super().__init__(**kwargs)
        self.dim = dim
        self.norm = layer_norm("norm", self.dtype_policy)
        self.reduction = Linear(
            2 * dim,
            use_bias=False,
            kernel_initializer=torch_default_kernel_init(),
            dtype=self.dtype_policy,
            name="reduction",
        )

    def build(self, input_shape):
        self.norm.build((None, 4 * self.dim))
        self.reduction.build((None, 4 * self.dim))

    def call(self, x):
        height, width = ops.shape(x)[1], ops.shape(x)[2]
        x = ops.pad(x, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)))
        half_height, half_width = (height + 1) // 2, (width + 1) // 2
        x = ops.reshape(x, (-1, half_height, 2, half_width, 2, self.dim))  # [B, h, row, w, col, C]
        # Official order x0..x3 = (row, col) (0, 0), (1, 0), (0, 1), (1, 1): column-major.
        x = ops.transpose(x, (0, 1, 3, 4, 2, 5))
        x = ops.reshape(x, (-1, half_height, half_width, 4 * self.dim))
        return self.reduction(self.norm(x))

    def get_config(self):
        return {**super().get_config(), "dim": self.dim}


@register
class SwinTransformer(keras.layers.Layer):
    """The official D2 Swin Transformer backbone (no absolute position embedding, patch norm on).

    Args:
        embed_dim: int C, res2 channels (doubles per stage).
        depths: 4 ints, blocks per stage. num_heads: 4 ints, attention heads per stage.
        window_size: int (7 for ImageNet-224 weights, 12 for 384).
        patch_size: int (4). mlp_ratio: float (4.0).
        drop_path_rate: float, stochastic depth rising linearly from 0 to this over all blocks
            (training only; official 0.3).

    Call: `x` (B, H, W, 3) normalised image -> dict `res2`..`res5` with strides 4, 8, 16, 32 and
    channels C * (1, 2, 4, 8), each after its own LayerNorm.
    """

    def __init__(
        self,
        *,
        embed_dim=96,
        depths=(2, 2, 6, 2),
        num_heads=(3, 6, 12, 24),
        window_size=7,
        patch_size=4,
        mlp_ratio=4.0,
        drop_path_rate=0.3,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.embed_dim = embed_dim
        self.depths = tuple(depths)
        self.num_heads = tuple(num_heads)
        self.window_size = window_size
        self.patch_size = patch_size
        self.mlp_ratio = mlp_ratio
        self.drop_path_rate = drop_path_rate
        kw = {"dtype": self.dtype_policy}
        self.patch_embed_proj = keras.layers.Conv2D(
            embed_dim,
            patch_size,
            strides=patch_size,
            padding="valid",
            kernel_initializer=torch_default_kernel_init(),
            name="patch_embed_proj",
            **kw,
        )
        self.patch_embed_norm = layer_norm("patch_embed_norm", self.dtype_policy)
        rates = np.linspace(0.0, drop_path_rate, sum(self.depths)).tolist()
        self.stages, self.downsamples, self.stage_norms = [], [], []
        for i, (depth, heads) in enumerate(zip(self.depths, self.num_heads, strict=True)):
            dim = embed_dim * 2**i
            self.stages.append(
                [
                    SwinBlock(
                        dim=dim,
                        num_heads=heads,
                        window_size=window_size,
                        shift_size=0 if j % 2 == 0 else window_size // 2,
                        mlp_ratio=mlp_ratio,
                        drop_path=rates[sum(self.depths[:i]) + j],
                        name=f"layers_{i}_blocks_{j}",
                        **kw,
                    )
                    for j in range(depth)
                ]
            )
            if i < len(self.depths) - 1:
                self.downsamples.append(PatchMerging(dim=dim, name=f"layers_{i}_downsample", **kw))
            self.stage_norms.append(layer_norm(f"norm{i}", self.dtype_policy))

    def output_shape(self):
        """Name -> ShapeSpec(channels, stride) of res2..res5 (detectron2 `Backbone.output_shape`)."""
        return {f"res{i + 2}": ShapeSpec(self.embed_dim * 2**i, 4 * 2**i) for i in range(len(self.depths))}

    @property
    def out_channels(self):
        """Channels of res2..res5."""
        return {name: spec.channels for name, spec in self.output_shape().items()}

    def build(self, input_shape):
        self.patch_embed_proj.build((None, None, None, input_shape[-1]))
        self.patch_embed_norm.build((None, self.embed_dim))
        for i, blocks in enumerate(self.stages):
            dim = self.embed_dim * 2**i
            for block in blocks:
                block.build((None, None, None, dim))
            if i < len(self.downsamples):
                self.downsamples[i].build((None, None, None, dim))
            self.stage_norms[i].build((None, dim))

    def call(self, x, training=None):
        p = self.patch_size
        height, width = ops.shape(x)[1], ops.shape(x)[2]
        x = ops.pad(x, ((0, 0), (0, (-height) % p), (0, (-width) % p), (0, 0)))
        x = self.patch_embed_norm(self.patch_embed_proj(x))
        features = {}
        for i, blocks in enumerate(self.stages):
            for block in blocks:
                x = block(x, training=training)
            features[f"res{i + 2}"] = self.stage_norms[i](x)
            if i < len(self.downsamples):
                x = self.downsamples[i](x)
        return features

    def get_config(self):
        return {
            **super().get_config(),
            "embed_dim": self.embed_dim,
            "depths": self.depths,
            "num_heads": self.num_heads,
            "window_size": self.window_size,
            "patch_size": self.patch_size,
            "mlp_ratio": self.mlp_ratio,
            "drop_path_rate": self.drop_path_rate,
        }
