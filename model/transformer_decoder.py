"""Masked-attention transformer decoder with the prediction heads.

Each layer: masked cross-attention to one feature level (1/32, 1/16, 1/8 in turn) -> self-attention
-> FFN, all post-norm. After the raw queries and after every layer the heads predict classes and
masks; the masks, resized to the next level and thresholded at sigmoid 0.5, restrict the next
cross-attention to the predicted foreground.
"""

import keras
from keras import ops

from model.layers import Linear, layer_norm, register, resize_bilinear, torch_default_kernel_init
from model.position_encoding import sine_position_encoding


@register
class MultiHeadAttention(keras.layers.Layer):
    """Scaled dot-product attention with PyTorch `nn.MultiheadAttention` weights (q/k/v split).

    Args:
        hidden_dim: int. num_heads: int.

    Call: `query` (B, Lq, C), `key` (B, Lk, C), `value` (B, Lk, C), optional `allowed` bool
    (B, Lq, Lk) (False blocks a key for a query; no row may be all False) -> (B, Lq, C).
    """

    def __init__(self, *, hidden_dim, num_heads, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        kw = {"dtype": self.dtype_policy, "kernel_initializer": "glorot_uniform"}
        self.q_proj = Linear(hidden_dim, name="q_proj", **kw)
        self.k_proj = Linear(hidden_dim, name="k_proj", **kw)
        self.v_proj = Linear(hidden_dim, name="v_proj", **kw)
        self.out_proj = Linear(hidden_dim, name="out_proj", **kw)

    def build(self, query_shape):
        for layer in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            layer.build((None, None, self.hidden_dim))

    def call(self, query, key, value, allowed=None):
        head_dim = self.hidden_dim // self.num_heads

        def split_heads(x):  # [B, L, C] -> [B, heads, L, head_dim]
            batch, length, _ = ops.shape(x)  # one read: on TensorFlow each adds ops per unknown dimension
            return ops.transpose(ops.reshape(x, (batch, length, self.num_heads, head_dim)), (0, 2, 1, 3))

        q = split_heads(self.q_proj(query)) * ops.cast(head_dim**-0.5, query.dtype)
        k = split_heads(self.k_proj(key))
        v = split_heads(self.v_proj(value))
        logits = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2)))  # (B, heads, Lq, Lk)
        if allowed is not None:
            logits = ops.where(allowed[:, None], logits, ops.cast(float("-inf"), logits.dtype))
        attended = ops.matmul(ops.softmax(logits, axis=-1), v)  # (B, heads, Lq, head_dim)
        attended = ops.reshape(ops.transpose(attended, (0, 2, 1, 3)), ops.shape(query))
        return self.out_proj(attended)

    def get_config(self):
        return {**super().get_config(), "hidden_dim": self.hidden_dim, "num_heads": self.num_heads}


@register
class DecoderLayer(keras.layers.Layer):
    """Masked cross-attention -> self-attention -> FFN, each `x = LN(x + sublayer(x))`.

    Args:
        hidden_dim: int. num_heads: int. ffn_dim: int.

    Call: `queries` (B, Q, C), `query_pos` (1, Q, C), `memory` (B, S, C), `memory_pos` (1, S, C),
    `allowed` bool (B, Q, S) -> (B, Q, C).
    """

    def __init__(self, *, hidden_dim, num_heads, ffn_dim, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.ffn_dim = ffn_dim
        kw = {"dtype": self.dtype_policy}
        self.cross_attn = MultiHeadAttention(hidden_dim=hidden_dim, num_heads=num_heads, name="cross_attn", **kw)
        self.cross_attn_norm = layer_norm("cross_attn_norm", self.dtype_policy)
        self.self_attn = MultiHeadAttention(hidden_dim=hidden_dim, num_heads=num_heads, name="self_attn", **kw)
        self.self_attn_norm = layer_norm("self_attn_norm", self.dtype_policy)
        self.linear1 = Linear(ffn_dim, kernel_initializer="glorot_uniform", name="linear1", **kw)
        self.linear2 = Linear(hidden_dim, kernel_initializer="glorot_uniform", name="linear2", **kw)
        self.ffn_norm = layer_norm("ffn_norm", self.dtype_policy)

    def build(self, queries_shape):
        tokens = (None, None, self.hidden_dim)
        for layer in (self.cross_attn, self.cross_attn_norm, self.self_attn, self.self_attn_norm, self.linear1):
            layer.build(tokens)
        self.linear2.build((None, None, self.ffn_dim))
        self.ffn_norm.build(tokens)

    def call(self, queries, query_pos, memory, memory_pos, allowed):
        x = queries
        x = self.cross_attn_norm(x + self.cross_attn(x + query_pos, memory + memory_pos, memory, allowed))
        x = self.self_attn_norm(x + self.self_attn(x + query_pos, x + query_pos, x))
        return self.ffn_norm(x + self.linear2(ops.relu(self.linear1(x))))

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_dim": self.hidden_dim,
            "num_heads": self.num_heads,
            "ffn_dim": self.ffn_dim,
        }


@register
class MaskedAttentionDecoder(keras.layers.Layer):
    """Learnable queries refined by masked attention; predictions after every layer.

    Args:
        num_classes: int K (the class head has K + 1 outputs, the last is no-object).
        num_queries: int. hidden_dim: int. num_heads: int. ffn_dim: int.
        num_layers: int, decoder layers; `num_layers + 1` prediction sets come out.
        mask_dim: int, channels of the mask features.

    Call: `multi_scale_features` list of 3 (B, h_l, w_l, C) maps (1/32, 1/16, 1/8) and
    `mask_features` (B, H/4, W/4, mask_dim) -> dict `pred_logits` (B, Q, K+1),
    `pred_masks` (B, Q, H/4, W/4) and `aux_outputs` (list of `num_layers` earlier dicts).
    """

    num_levels = 3

    def __init__(
        self,
        *,
        num_classes,
        num_queries=100,
        hidden_dim=256,
        num_heads=8,
        ffn_dim=2048,
        num_layers=9,
        mask_dim=256,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.ffn_dim = ffn_dim
        self.num_layers = num_layers
        self.mask_dim = mask_dim
        kw = {"dtype": self.dtype_policy}
        self.decoder_layers = [
            DecoderLayer(hidden_dim=hidden_dim, num_heads=num_heads, ffn_dim=ffn_dim, name=f"layer_{i}", **kw)
            for i in range(num_layers)
        ]
        self.decoder_norm = layer_norm("decoder_norm", self.dtype_policy)
        self.class_embed = Linear(
            num_classes + 1, kernel_initializer=torch_default_kernel_init(), name="class_embed", **kw
        )
        self.mask_embed = [
            Linear(
                mask_dim if i == 2 else hidden_dim,
                kernel_initializer=torch_default_kernel_init(),
                name=f"mask_embed_{i}",
                **kw,
            )
            for i in range(3)
        ]

    def build(self, multi_scale_features_shape):
        def embedding():  # nn.Embedding default; one initializer per weight (see model/layers.py)
            return keras.initializers.RandomNormal(stddev=1.0)

        self.query_feat = self.add_weight(
            name="query_feat", shape=(self.num_queries, self.hidden_dim), initializer=embedding()
        )
        self.query_embed = self.add_weight(
            name="query_embed", shape=(self.num_queries, self.hidden_dim), initializer=embedding()
        )
        self.level_embed = self.add_weight(
            name="level_embed", shape=(self.num_levels, self.hidden_dim), initializer=embedding()
        )
        tokens = (None, None, self.hidden_dim)
        for layer in self.decoder_layers:
            layer.build(tokens)
        self.decoder_norm.build(tokens)
        self.class_embed.build(tokens)
        for layer in self.mask_embed:
            layer.build(tokens)

    def call(self, multi_scale_features, mask_features):
        batch = ops.shape(mask_features)[0]
        dtype = mask_features.dtype
        memories, memory_positions, sizes = [], [], []
        for level, feature in enumerate(multi_scale_features):
            height, width = ops.shape(feature)[1:3]
            sizes.append((height, width))
            pos = sine_position_encoding(height, width, self.hidden_dim // 2, dtype=dtype)
            memory_positions.append(ops.reshape(pos, (1, height * width, self.hidden_dim)))
            memory = ops.reshape(feature, (batch, height * width, self.hidden_dim))
            memories.append(memory + ops.cast(self.level_embed[level], dtype))

        query_pos = ops.cast(self.query_embed, dtype)[None]  # (1, Q, C)
        queries = ops.broadcast_to(ops.cast(self.query_feat, dtype)[None], (batch, self.num_queries, self.hidden_dim))

        predictions = [self._predict(queries, mask_features, sizes[0])]
        for index, layer in enumerate(self.decoder_layers):
            level = index % self.num_levels
            allowed = predictions[-1].pop("allowed")
            # A query whose mask is empty at this level may attend everywhere.
            allowed = allowed | ~ops.any(allowed, axis=-1, keepdims=True)
            queries = layer(queries, query_pos, memories[level], memory_positions[level], allowed)
            predictions.append(self._predict(queries, mask_features, sizes[(index + 1) % self.num_levels]))
        predictions[-1].pop("allowed")
        final = predictions[-1]
        return {"pred_logits": final["pred_logits"], "pred_masks": final["pred_masks"], "aux_outputs": predictions[:-1]}

    def _predict(self, queries, mask_features, attention_size):
        """Class logits, mask logits and the attention mask for the next layer (at `attention_size`)."""
        x = self.decoder_norm(queries)
        class_logits = self.class_embed(x)
        mask_embed = ops.relu(self.mask_embed[0](x))
        mask_embed = ops.relu(self.mask_embed[1](mask_embed))
        mask_embed = self.mask_embed[2](mask_embed)
        mask_logits = ops.einsum("bqc,bhwc->bqhw", mask_embed, mask_features)
        # [B, Q, H/4, W/4] -> [B, h, w, Q] at the next level's size -> [B, Q, h * w]
        resized = resize_bilinear(ops.transpose(mask_logits, (0, 2, 3, 1)), attention_size)
        resized = ops.transpose(ops.reshape(resized, (ops.shape(resized)[0], -1, self.num_queries)), (0, 2, 1))
        allowed = ops.sigmoid(resized) >= 0.5  # boolean: no gradient flows back
        return {"pred_logits": class_logits, "pred_masks": mask_logits, "allowed": allowed}

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "num_queries": self.num_queries,
            "hidden_dim": self.hidden_dim,
            "num_heads": self.num_heads,
            "ffn_dim": self.ffn_dim,
            "num_layers": self.num_layers,
            "mask_dim": self.mask_dim,
        }
