"""The assembled Mask2Former: normalisation and padding, backbone, pixel decoder, transformer decoder."""

import keras
from keras import ops

from model.backbone import ResNet
from model.layers import register
from model.pixel_decoder import MSDeformAttnPixelDecoder
from model.swin import SwinTransformer
from model.transformer_decoder import MaskedAttentionDecoder


@register
class Mask2Former(keras.Model):
    """Mask2Former (Cheng et al., CVPR 2022) around any backbone with named multi-scale features.

    Args (all keyword-only; `build_model(config)` fills them from `config.model`):
        backbone: a layer mapping a normalised image (B, H, W, 3) to a dict of feature maps, with
            `output_shape()` -> {name: ShapeSpec(channels, stride)} covering res2..res5 (strides
            4..32): `ResNet` or `SwinTransformer`. None: a ResNet-50.
        num_classes: int K. num_queries: int.
        hidden_dim, num_heads, decoder_ffn_dim, num_decoder_layers: transformer decoder.
        pixel_decoder_dim, mask_dim, encoder_layers, encoder_ffn_dim, deformable_points,
        group_norm_groups: pixel decoder.
        pixel_mean, pixel_std: 3 floats each, RGB on the 0..255 scale.
        size_divisibility: int, inputs are zero-padded (after normalisation) to a multiple of it.

    Call: `images` (B, H, W, 3) float RGB 0..255 -> dict
        `pred_logits` (B, Q, K+1), `pred_masks` (B, Q, Hp/4, Wp/4) with Hp, Wp = H, W rounded up to
        `size_divisibility`, and `aux_outputs`: `num_decoder_layers` dicts with the same keys,
        earliest prediction first.
    """

    def __init__(
        self,
        *,
        backbone=None,
        num_classes=80,
        num_queries=100,
        hidden_dim=256,
        num_heads=8,
        decoder_ffn_dim=2048,
        num_decoder_layers=9,
        pixel_decoder_dim=256,
        mask_dim=256,
        encoder_layers=6,
        encoder_ffn_dim=1024,
        deformable_points=4,
        group_norm_groups=32,
        pixel_mean=(123.675, 116.28, 103.53),
        pixel_std=(58.395, 57.12, 57.375),
        size_divisibility=32,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.decoder_ffn_dim = decoder_ffn_dim
        self.num_decoder_layers = num_decoder_layers
        self.pixel_decoder_dim = pixel_decoder_dim
        self.mask_dim = mask_dim
        self.encoder_layers = encoder_layers
        self.encoder_ffn_dim = encoder_ffn_dim
        self.deformable_points = deformable_points
        self.group_norm_groups = group_norm_groups
        self.pixel_mean = tuple(float(v) for v in pixel_mean)
        self.pixel_std = tuple(float(v) for v in pixel_std)
        self.size_divisibility = size_divisibility
        kw = {"dtype": self.dtype_policy}
        self.backbone = backbone if backbone is not None else ResNet(name="backbone", **kw)
        shapes = self.backbone.output_shape()
        expected = {f"res{i + 2}": 4 * 2**i for i in range(4)}
        if {name: shapes[name].stride for name in expected if name in shapes} != expected:
            raise ValueError(
                f"the backbone must output res2..res5 at strides 4, 8, 16, 32; {type(self.backbone).__name__} "
                f"gives {dict(shapes)}"
            )
        # The official pixel decoder always runs in float32 (autocast disabled), also under AMP.
        mixed = self.dtype_policy.compute_dtype != self.dtype_policy.variable_dtype
        self.pixel_decoder = MSDeformAttnPixelDecoder(
            in_channels={name: shapes[name].channels for name in expected},
            conv_dim=pixel_decoder_dim,
            mask_dim=mask_dim,
            num_heads=num_heads,
            num_points=deformable_points,
            encoder_layers=encoder_layers,
            encoder_ffn_dim=encoder_ffn_dim,
            group_norm_groups=group_norm_groups,
            name="pixel_decoder",
            dtype="float32" if mixed else self.dtype_policy,
        )
        self.transformer_decoder = MaskedAttentionDecoder(
            num_classes=num_classes,
            num_queries=num_queries,
            hidden_dim=hidden_dim,
            num_heads=num_heads,
            ffn_dim=decoder_ffn_dim,
            num_layers=num_decoder_layers,
            mask_dim=mask_dim,
            name="transformer_decoder",
            **kw,
        )

    def build(self, input_shape=(None, None, None, 3)):
        if not self.backbone.built:  # a backbone passed in (or deserialised) may come built
            self.backbone.build(input_shape)
        self.pixel_decoder.build(None)
        self.transformer_decoder.build(None)
        self.built = True

    def preprocess(self, images):
        """(B, H, W, 3) 0..255 -> normalised, zero-padded bottom/right to `size_divisibility`."""
        images = ops.cast(images, self.compute_dtype)
        mean = ops.convert_to_tensor(self.pixel_mean, dtype=images.dtype)
        std = ops.convert_to_tensor(self.pixel_std, dtype=images.dtype)
        x = (images - mean) / std
        height, width = ops.shape(x)[1:3]
        pad_h = (-height) % self.size_divisibility
        pad_w = (-width) % self.size_divisibility
        return ops.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))

    def call(self, images, training=None):
        features = self.backbone(self.preprocess(images), training=training)
        mask_features, multi_scale_features = self.pixel_decoder(features)
        return self.transformer_decoder(multi_scale_features, mask_features)

    def get_config(self):
        return {
            **super().get_config(),
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "num_classes": self.num_classes,
            "num_queries": self.num_queries,
            "hidden_dim": self.hidden_dim,
            "num_heads": self.num_heads,
            "decoder_ffn_dim": self.decoder_ffn_dim,
            "num_decoder_layers": self.num_decoder_layers,
            "pixel_decoder_dim": self.pixel_decoder_dim,
            "mask_dim": self.mask_dim,
            "encoder_layers": self.encoder_layers,
            "encoder_ffn_dim": self.encoder_ffn_dim,
            "deformable_points": self.deformable_points,
            "group_norm_groups": self.group_norm_groups,
            "pixel_mean": self.pixel_mean,
            "pixel_std": self.pixel_std,
            "size_divisibility": self.size_divisibility,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("backbone"), dict):
            config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        elif "backbone_stage_blocks" in config:  # .keras files written before the backbone was an argument
            config["backbone"] = ResNet(
                stage_blocks=config.pop("backbone_stage_blocks"),
                stem_channels=config.pop("backbone_stem_channels"),
                res2_channels=config.pop("backbone_res2_channels"),
                name="backbone",
                dtype=config.get("dtype"),
            )
        return cls(**config)


def build_backbone(model_config, dtype=None):
    """The backbone named by `model_config.backbone` ("resnet" or "swin"), from its fields."""
    if model_config.backbone == "swin":
        return SwinTransformer(
            embed_dim=model_config.swin_embed_dim,
            depths=model_config.swin_depths,
            num_heads=model_config.swin_num_heads,
            window_size=model_config.swin_window_size,
            drop_path_rate=model_config.swin_drop_path_rate,
            name="backbone",
            dtype=dtype,
        )
    return ResNet(
        stage_blocks=model_config.backbone_stage_blocks,
        stem_channels=model_config.backbone_stem_channels,
        res2_channels=model_config.backbone_res2_channels,
        name="backbone",
        dtype=dtype,
    )


def build_model(config, **kwargs):
    """Mask2Former from a `Mask2FormerConfig` (its `model` section), built and ready to load weights.

    `kwargs` go to `Mask2Former` (e.g. `dtype="mixed_float16"`, also given to the backbone).
    """
    m = config.model
    model = Mask2Former(
        backbone=build_backbone(m, dtype=kwargs.get("dtype")),
        num_classes=m.num_classes,
        num_queries=m.num_queries,
        hidden_dim=m.hidden_dim,
        num_heads=m.num_heads,
        decoder_ffn_dim=m.decoder_ffn_dim,
        num_decoder_layers=m.num_decoder_layers,
        pixel_decoder_dim=m.pixel_decoder_dim,
        mask_dim=m.mask_dim,
        encoder_layers=m.encoder_layers,
        encoder_ffn_dim=m.encoder_ffn_dim,
        deformable_points=m.deformable_points,
        group_norm_groups=m.group_norm_groups,
        pixel_mean=m.pixel_mean,
        pixel_std=m.pixel_std,
        size_divisibility=m.size_divisibility,
        **kwargs,
    )
    model.build((None, None, None, 3))
    return model
