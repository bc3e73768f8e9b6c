"""The reference implementation (Hugging Face `Mask2FormerForUniversalSegmentation`) for parity checks.

Builds an HF model with random weights and non-trivial batch-norm statistics, and writes its weights
under detectron2 names (the official checkpoint format) so they go through our public loader:

    hf, config = build_reference("r50", seed=0)
    state = hf_to_detectron2(hf.state_dict())
    outputs = run_reference(hf, images)    # images (B, H, W, 3) 0..255

Needs torch and transformers (`bash setup.sh --dev`).
"""

from __future__ import annotations

import numpy as np

from config import Mask2FormerConfig
from model.checkpoints.huggingface import hf_to_detectron2

# Architectures the reference is built in: our model fields and the matching HF settings.
SIZES = {
    "r50": {"model": {}, "num_labels": 80},
    "tiny": {
        "model": {
            "num_classes": 5,
            "num_queries": 7,
            "backbone_stage_blocks": (1, 1, 1, 1),
            "backbone_stem_channels": 16,
            "backbone_res2_channels": 32,
            "hidden_dim": 32,
            "num_heads": 4,
            "decoder_ffn_dim": 64,
            "pixel_decoder_dim": 32,
            "mask_dim": 32,
            "encoder_layers": 2,
            "encoder_ffn_dim": 64,
        },
        "num_labels": 5,
    },
    # Official Swin-T COCO model (47.4M parameters with 133 classes).
    "swin_t": {"model": {"backbone": "swin"}, "num_labels": 80},
    # Swin-L-shaped (window 12, head width 32, deep third stage) but narrow and shallow, tiny decoder.
    "swin_l_small": {
        "model": {
            "backbone": "swin",
            "swin_embed_dim": 64,
            "swin_depths": (2, 2, 4, 2),
            "swin_num_heads": (2, 4, 8, 16),
            "swin_window_size": 12,
            "num_classes": 5,
            "num_queries": 20,
            "hidden_dim": 64,
            "num_heads": 4,
            "decoder_ffn_dim": 128,
            "pixel_decoder_dim": 64,
            "mask_dim": 64,
            "encoder_layers": 2,
            "encoder_ffn_dim": 128,
            "num_decoder_layers": 3,
        },
        "num_labels": 5,
    },
}


def keras_config(size: str) -> Mask2FormerConfig:
    """Our config for a reference size."""
    config = Mask2FormerConfig()
    for key, value in SIZES[size]["model"].items():
        setattr(config.model, key, value)
    return config.validate()


def build_hf(config: Mask2FormerConfig):
    """HF `Mask2FormerForUniversalSegmentation` of the architecture of our `config`, HF's own init."""
    from transformers import Mask2FormerConfig as HFConfig
    from transformers import Mask2FormerForUniversalSegmentation, ResNetConfig, SwinConfig

    m = config.model
    stages = ["stage1", "stage2", "stage3", "stage4"]
    if m.backbone == "swin":
        # HF's SwinBackbone always partitions (`always_partition=True`): window and shift kept on small
        # maps, as the official D2 Swin. Its `hidden_states_norms.stage{i+1}` are the official `norm{i}`.
        backbone = SwinConfig(
            embed_dim=m.swin_embed_dim,
            depths=list(m.swin_depths),
            num_heads=list(m.swin_num_heads),
            window_size=m.swin_window_size,
            drop_path_rate=m.swin_drop_path_rate,
            out_features=stages,
        )
    else:
        backbone = ResNetConfig(
            depths=list(m.backbone_stage_blocks),
            hidden_sizes=[m.backbone_res2_channels * 2**i for i in range(4)],
            embedding_size=m.backbone_stem_channels,
            layer_type="bottleneck",
            out_features=stages,
        )
    hf_config = HFConfig(
        backbone_config=backbone,
        num_labels=m.num_classes,
        num_queries=m.num_queries,
        hidden_dim=m.hidden_dim,
        feature_size=m.pixel_decoder_dim,
        mask_feature_size=m.mask_dim,
        num_attention_heads=m.num_heads,
        dim_feedforward=m.decoder_ffn_dim,
        encoder_feedforward_dim=m.encoder_ffn_dim,
        encoder_layers=m.encoder_layers,
        decoder_layers=m.num_decoder_layers + 1,  # HF counts prediction sets
    )
    return Mask2FormerForUniversalSegmentation(hf_config)


def build_reference(size: str, seed: int = 0, calibration_images=None, dtype="float32"):
    """HF model with random weights (every parameter perturbed, so zero-initialised offsets matter)
    and batch-norm statistics measured on `calibration_images` (B, H, W, 3), then random affine."""
    import torch

    m = keras_config(size).model
    torch.manual_seed(seed)
    hf = build_hf(keras_config(size))
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * (0.02 if p.dim() > 1 else 0.1))
        if calibration_images is not None and m.backbone == "resnet":
            for bn in (mod for mod in hf.modules() if isinstance(mod, torch.nn.BatchNorm2d)):
                bn.reset_running_stats()
                bn.momentum = None  # cumulative average over the calibration pass
            hf.train()
            hf.model.pixel_level_module.encoder(normalize(calibration_images).float())
            for name, bn in hf.named_modules():
                if isinstance(bn, torch.nn.BatchNorm2d):
                    # The last norm of each residual branch is kept small, as in trained ResNets,
                    # so that feature maps stay at realistic magnitudes through 16 blocks.
                    last_in_branch = name.endswith("layer.2.normalization")
                    bn.weight.uniform_(0.1, 0.3) if last_in_branch else bn.weight.uniform_(0.5, 1.5)
                    bn.bias.normal_(0.0, 0.1)
    hf = hf.eval()
    return hf.double() if dtype == "float64" else hf


def normalize(images):
    """(B, H, W, 3) 0..255 numpy -> normalised NCHW float64 torch tensor, as HF expects."""
    import torch

    m = Mask2FormerConfig().model
    x = (np.asarray(images, np.float64) - np.array(m.pixel_mean)) / np.array(m.pixel_std)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def reference_train_step(hf, images, mask_labels, class_labels, learning_rate=1e-4, weight_decay=0.05):
    """The reference's training step as a function returning the loss: forward with the labels (its
    `Mask2FormerLoss`), backward, `clip_grad_norm_(0.01)`, `torch.optim.AdamW`; frozen batch norm, as ours.

    images: (B, H, W, 3) 0..255; mask_labels, class_labels: per image (N, H, W) float32 and (N,) int64
    torch tensors on the device of `hf`, which is put in training mode here.
    """
    import torch

    hf.train()
    for module in hf.modules():  # frozen batch norm, as ours (detectron2's FrozenBatchNorm2d)
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
            module.requires_grad_(False)
    trainable = [p for p in hf.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=weight_decay)
    pixels = normalize(images).float().to(next(hf.parameters()).device)

    def step() -> float:
        optimizer.zero_grad()
        loss = hf(pixel_values=pixels, mask_labels=mask_labels, class_labels=class_labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 0.01)
        optimizer.step()
        return float(loss.detach())

    return step


def run_reference(hf, images, allowed_masks=None) -> dict[str, np.ndarray]:
    """Every compared output of the reference, channels-last where it is a map.

    allowed_masks: optional, per decoder layer the (B, Q, h * w) bool mask it attends with (True = may
    attend) in place of the reference's own, e.g. ours from `attention_masks(run_ours(...), "ours")`.
    """
    import torch

    x = normalize(images).to(next(hf.parameters()).dtype)
    predictor = hf.model.transformer_module.decoder.mask_predictor
    fed = iter(allowed_masks or [])

    def feed(module, args, output):  # the predictor's (mask logits, (B * heads, Q, h * w) True = masked)
        allowed = next(fed, None)  # its last call makes the final set's mask, used by no layer
        if allowed is None:
            return output
        return output[0], torch.from_numpy(~allowed).repeat_interleave(module.num_heads, 0)

    handle = predictor.register_forward_hook(feed) if allowed_masks is not None else None
    try:
        with torch.no_grad():
            out = hf(pixel_values=x, output_hidden_states=True, output_auxiliary_logits=True)
    finally:
        if handle is not None:
            handle.remove()

    def nhwc(t):
        return t.detach().numpy().transpose(0, 2, 3, 1)

    result = {f"res{i + 2}": nhwc(t) for i, t in enumerate(out.encoder_hidden_states)}
    result.update({f"multi_scale_{i}": nhwc(t) for i, t in enumerate(out.pixel_decoder_hidden_states)})
    result["mask_features"] = nhwc(out.pixel_decoder_last_hidden_state)
    result["pred_logits"] = out.class_queries_logits.numpy()
    result["pred_masks"] = out.masks_queries_logits.numpy()
    for i, aux in enumerate(out.auxiliary_logits):
        result[f"aux_{i}_pred_logits"] = aux["class_queries_logits"].numpy()
        result[f"aux_{i}_pred_masks"] = aux["masks_queries_logits"].numpy()
    return result


def run_ours(model, images) -> dict[str, np.ndarray]:
    """The same outputs from our Keras model."""
    from keras import ops

    x = model.preprocess(ops.convert_to_tensor(np.asarray(images, np.float32)))
    features = model.backbone(x)
    mask_features, multi_scale = model.pixel_decoder(features)
    out = model.transformer_decoder(multi_scale, mask_features)
    result = {k: ops.convert_to_numpy(v) for k, v in features.items()}
    result.update({f"multi_scale_{i}": ops.convert_to_numpy(t) for i, t in enumerate(multi_scale)})
    result["mask_features"] = ops.convert_to_numpy(mask_features)
    result["pred_logits"] = ops.convert_to_numpy(out["pred_logits"])
    result["pred_masks"] = ops.convert_to_numpy(out["pred_masks"])
    for i, aux in enumerate(out["aux_outputs"]):
        result[f"aux_{i}_pred_logits"] = ops.convert_to_numpy(aux["pred_logits"])
        result[f"aux_{i}_pred_masks"] = ops.convert_to_numpy(aux["pred_masks"])
    return result


def prediction_names(num_sets: int) -> list[str]:
    """Prediction sets in order: aux_0 (raw queries) .. aux_{n-2}, then the final one."""
    return [f"aux_{i}_" for i in range(num_sets - 1)] + [""]


def attention_masks(outputs: dict, implementation: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per prediction set that feeds a decoder layer: (allowed, logits), both (B, Q, h * w) at that layer's
    level, computed from `outputs[...pred_masks]` as `implementation` ("reference" or "ours") does in its
    forward pass, in the run's dtype (its own bilinear resize, then sigmoid against 0.5), so bit for bit the
    mask it attended with. allowed: True where a query may attend; logits: the resized mask logits."""
    import torch
    from keras import ops

    from model.layers import resize_bilinear

    names = prediction_names(sum(k.endswith("pred_masks") for k in outputs))
    result = []
    for index, prefix in enumerate(names[:-1]):
        size = tuple(outputs[f"multi_scale_{index % 3}"].shape[1:3])
        masks = outputs[f"{prefix}pred_masks"]  # (B, Q, H, W)
        if implementation == "reference":
            resized = torch.nn.functional.interpolate(
                torch.from_numpy(masks), size=size, mode="bilinear", align_corners=False
            ).flatten(2)
            result.append(((~(resized.sigmoid() < 0.5)).numpy(), resized.numpy()))
        else:
            resized = resize_bilinear(ops.convert_to_tensor(masks.transpose(0, 2, 3, 1)), size)
            resized = ops.transpose(ops.reshape(resized, (masks.shape[0], -1, masks.shape[1])), (0, 2, 1))
            result.append((ops.convert_to_numpy(ops.sigmoid(resized) >= 0.5), ops.convert_to_numpy(resized)))
    return result


def attention_mask_flips(reference: list, ours: list) -> list[np.ndarray]:
    """Per decoder layer, the attention-mask bits that differ between two `attention_masks` results:
    (n, 2) mask logits there, the reference's and ours."""
    flips = []
    for (allowed_ref, logits_ref), (allowed_ours, logits_ours) in zip(reference, ours, strict=True):
        differ = allowed_ref != allowed_ours
        flips.append(np.stack([logits_ref[differ], logits_ours[differ]], axis=-1))
    return flips


def load_reference_weights(model, hf, size: str, seed: int = 0) -> None:
    """Loads the reference's weights into our built `model` the way a user loads an official checkpoint:
    written as a detectron2 pickle (the released layout), read by our public loader."""
    import pickle
    import tempfile

    from model.checkpoints import load_detectron2_checkpoint

    state = hf_to_detectron2(hf.state_dict())
    tokens = keras_config(size).model.swin_window_size ** 2
    for name in [n for n in state if n.endswith(".attn.relative_position_bias_table")]:
        # The official file also holds the fixed index buffer; noise here must not be loaded.
        index_name = name.replace("relative_position_bias_table", "relative_position_index")
        state[index_name] = np.random.default_rng(seed).integers(0, len(state[name]), (tokens, tokens))
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/model_final.pkl"
        with open(path, "wb") as f:
            pickle.dump({"model": state}, f)
        load_detectron2_checkpoint(model, path)


def compare(size: str = "r50", dtype: str = "float32", seed: int = 0, image_shape=(2, 160, 224)):
    """Builds the reference and our model with the same weights (through a detectron2 pickle and
    our public loader) and runs both on the same random image batch.

    The reference attends with our attention masks (bit for bit those it computes from its own logits,
    except where a logit within rounding of 0 falls on the other side of sigmoid 0.5): a flipped bit would
    otherwise move every later layer. `flips` lists, per decoder layer, where its own mask differs from
    ours, with both logits, for the caller to check that they sit at 0.

    Returns (rows, flips): rows = [(output name, shape, max abs difference, max abs reference value)],
    flips = per decoder layer (n, 2) mask logits (reference's, ours) at the n differing bits.
    """
    from model import build_model

    images = np.random.default_rng(seed).uniform(0, 255, (*image_shape, 3)).astype(np.float32)
    hf = build_reference(size, seed=seed, calibration_images=images, dtype=dtype)
    model = build_model(keras_config(size), dtype=dtype)
    load_reference_weights(model, hf, size, seed=seed)
    ours = run_ours(model, images)
    masks = attention_masks(ours, "ours")
    reference = run_reference(hf, images, [allowed for allowed, _ in masks])
    rows = [
        (
            name,
            reference[name].shape,
            float(np.abs(reference[name] - ours[name]).max()),
            float(np.abs(reference[name]).max()),
        )
        for name in reference
    ]
    return rows, attention_mask_flips(attention_masks(reference, "reference"), masks)
