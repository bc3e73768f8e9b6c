"""The official model zoo as plain data, importable without Keras or TensorFlow (`--list` stays fast).

    from model_zoo import MODEL_ZOO, ZOO_MODELS, describe_backbone
    MODEL_ZOO["coco_instance_r50"]      # its URL; `model.checkpoints.download` fetches and checks it

`ZOO_MODELS` names every official COCO / ADE20K / Cityscapes Mask2Former with its paper result,
`MODEL_ZOO` maps names to URLs (plus the ImageNet R-50 backbone), `NOT_PUBLISHED` says how to make the
starting weights that are not published, `describe_backbone` names a backbone by its config fields.
Loading goes through `model.checkpoints`.
"""

from __future__ import annotations

_ZOO = "https://dl.fbaipublicfiles.com/maskformer/mask2former"
# Every official COCO, Cityscapes and ADE20K Mask2Former (facebookresearch/Mask2Former MODEL_ZOO.md), by
# `{dataset}_{task}_{backbone}`, with the paper's result; each has a preset of the same name in config.py.
# The file names end in the first 6 hex digits of the file's md5, which `download` checks.
ZOO_MODELS = {
    "coco_instance_r50": ("coco/instance/maskformer2_R50_bs16_50ep/model_final_3c8ec9.pkl", "43.7 AP"),
    "coco_instance_r101": ("coco/instance/maskformer2_R101_bs16_50ep/model_final_eba159.pkl", "44.2 AP"),
    "coco_instance_swin_t": ("coco/instance/maskformer2_swin_tiny_bs16_50ep/model_final_86143f.pkl", "45.0 AP"),
    "coco_instance_swin_s": ("coco/instance/maskformer2_swin_small_bs16_50ep/model_final_1e7f22.pkl", "46.3 AP"),
    "coco_instance_swin_b": ("coco/instance/maskformer2_swin_base_384_bs16_50ep/model_final_f6e0f6.pkl", "46.7 AP"),
    "coco_instance_swin_b_in21k": (
        "coco/instance/maskformer2_swin_base_IN21k_384_bs16_50ep/model_final_83d103.pkl",
        "48.1 AP",
    ),
    "coco_instance_swin_l_in21k": (
        "coco/instance/maskformer2_swin_large_IN21k_384_bs16_100ep/model_final_e5f453.pkl",
        "50.1 AP",
    ),
    "coco_panoptic_r50": ("coco/panoptic/maskformer2_R50_bs16_50ep/model_final_94dc52.pkl", "51.9 PQ"),
    "coco_panoptic_r101": ("coco/panoptic/maskformer2_R101_bs16_50ep/model_final_b807bd.pkl", "52.6 PQ"),
    "coco_panoptic_swin_t": ("coco/panoptic/maskformer2_swin_tiny_bs16_50ep/model_final_9fd0ae.pkl", "53.2 PQ"),
    "coco_panoptic_swin_s": ("coco/panoptic/maskformer2_swin_small_bs16_50ep/model_final_a407fd.pkl", "54.6 PQ"),
    "coco_panoptic_swin_b": ("coco/panoptic/maskformer2_swin_base_384_bs16_50ep/model_final_9d7f02.pkl", "55.1 PQ"),
    "coco_panoptic_swin_b_in21k": (
        "coco/panoptic/maskformer2_swin_base_IN21k_384_bs16_50ep/model_final_54b88a.pkl",
        "56.4 PQ",
    ),
    "coco_panoptic_swin_l_in21k": (
        "coco/panoptic/maskformer2_swin_large_IN21k_384_bs16_100ep/model_final_f07440.pkl",
        "57.8 PQ",
    ),
    "cityscapes_panoptic_r50": ("cityscapes/panoptic/maskformer2_R50_bs16_90k/model_final_4ab90c.pkl", "62.1 PQ"),
    "cityscapes_panoptic_r101": ("cityscapes/panoptic/maskformer2_R101_bs16_90k/model_final_04d286.pkl", "62.4 PQ"),
    "cityscapes_panoptic_swin_t": (
        "cityscapes/panoptic/maskformer2_swin_tiny_bs16_90k/model_final_ceba0f.pkl",
        "63.9 PQ",
    ),
    "cityscapes_panoptic_swin_s": (
        "cityscapes/panoptic/maskformer2_swin_small_bs16_90k/model_final_23efb7.pkl",
        "64.8 PQ",
    ),
    "cityscapes_panoptic_swin_b_in21k": (
        "cityscapes/panoptic/maskformer2_swin_base_IN21k_384_bs16_90k/model_final_fa840f.pkl",
        "66.1 PQ",
    ),
    "cityscapes_panoptic_swin_l_in21k": (
        "cityscapes/panoptic/maskformer2_swin_large_IN21k_384_bs16_90k/model_final_064788.pkl",
        "66.6 PQ",
    ),
    "cityscapes_instance_r50": ("cityscapes/instance/maskformer2_R50_bs16_90k/model_final_01a8ed.pkl", "37.4 AP"),
    "cityscapes_instance_r101": ("cityscapes/instance/maskformer2_R101_bs16_90k/model_final_c2b8c8.pkl", "38.5 AP"),
    "cityscapes_instance_swin_t": (
        "cityscapes/instance/maskformer2_swin_tiny_bs16_90k/model_final_6a63f8.pkl",
        "39.7 AP",
    ),
    "cityscapes_instance_swin_s": (
        "cityscapes/instance/maskformer2_swin_small_bs16_90k/model_final_974824.pkl",
        "41.8 AP",
    ),
    "cityscapes_instance_swin_b_in21k": (
        "cityscapes/instance/maskformer2_swin_base_IN21k_384_bs16_90k/model_final_7a3b6d.pkl",
        "42.0 AP",
    ),
    "cityscapes_instance_swin_l_in21k": (
        "cityscapes/instance/maskformer2_swin_large_IN21k_384_bs16_90k/model_final_dfa862.pkl",
        "43.7 AP",
    ),
    "cityscapes_semantic_r50": ("cityscapes/semantic/maskformer2_R50_bs16_90k/model_final_cc1b1f.pkl", "79.4 mIoU"),
    "cityscapes_semantic_r101": (
        "cityscapes/semantic/maskformer2_R101_bs16_90k/model_final_257ce8.pkl",
        "80.1 mIoU",
    ),
    "cityscapes_semantic_swin_t": (
        "cityscapes/semantic/maskformer2_swin_tiny_bs16_90k/model_final_2d58d4.pkl",
        "82.1 mIoU",
    ),
    "cityscapes_semantic_swin_s": (
        "cityscapes/semantic/maskformer2_swin_small_bs16_90k/model_final_fa26ae.pkl",
        "82.6 mIoU",
    ),
    "cityscapes_semantic_swin_b_in21k": (
        "cityscapes/semantic/maskformer2_swin_base_IN21k_384_bs16_90k/model_final_1c6b65.pkl",
        "83.3 mIoU",
    ),
    "cityscapes_semantic_swin_l_in21k": (
        "cityscapes/semantic/maskformer2_swin_large_IN21k_384_bs16_90k/model_final_17c1ee.pkl",
        "83.3 mIoU",
    ),
    "ade20k_panoptic_r50": ("ade20k/panoptic/maskformer2_R50_bs16_160k/model_final_5c90d4.pkl", "39.7 PQ"),
    "ade20k_panoptic_swin_l_in21k": (
        "ade20k/panoptic/maskformer2_swin_large_IN21k_384_bs16_160k/model_final_e0c58e.pkl",
        "48.1 PQ",
    ),
    "ade20k_instance_r50": ("ade20k/instance/maskformer2_R50_bs16_160k/model_final_67e945.pkl", "26.4 AP"),
    "ade20k_instance_swin_l_in21k": (
        "ade20k/instance/maskformer2_swin_large_IN21k_384_bs16_160k/model_final_92dae9.pkl",
        "34.9 AP",
    ),
    "ade20k_semantic_r50": ("ade20k/semantic/maskformer2_R50_bs16_160k/model_final_500878.pkl", "47.2 mIoU"),
    "ade20k_semantic_r101": ("ade20k/semantic/maskformer2_R101_bs16_90k/model_final_0d68be.pkl", "47.8 mIoU"),
    "ade20k_semantic_swin_t": ("ade20k/semantic/maskformer2_swin_tiny_bs16_160k/model_final_5274a6.pkl", "47.7 mIoU"),
    "ade20k_semantic_swin_s": (
        "ade20k/semantic/maskformer2_swin_small_bs16_160k/model_final_011c6d.pkl",
        "51.3 mIoU",
    ),
    "ade20k_semantic_swin_b": (
        "ade20k/semantic/maskformer2_swin_base_384_bs16_160k_res640/model_final_503e96.pkl",
        "52.4 mIoU",
    ),
    "ade20k_semantic_swin_b_in21k": (
        "ade20k/semantic/maskformer2_swin_base_IN21k_384_bs16_160k_res640/model_final_7e47bf.pkl",
        "53.9 mIoU",
    ),
    "ade20k_semantic_swin_l_in21k": (
        "ade20k/semantic/maskformer2_swin_large_IN21k_384_bs16_160k_res640/model_final_6b4a3a.pkl",
        "56.1 mIoU",
    ),
}

MODEL_ZOO = {
    # ImageNet R-50 (torchvision weights converted by detectron2; RGB input, stride in the 3x3).
    "R-50": "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/torchvision/R-50.pkl",
    **{name: f"{_ZOO}/{path}" for name, (path, _) in ZOO_MODELS.items()},
}

# Starting weights the official configs name but that are not published: how to make them.
NOT_PUBLISHED = {
    "R-101": (
        "no R-101.pkl is published for Mask2Former: the official R101 configs start from a local R-101.pkl "
        "converted from torchvision's resnet101-63fe2227.pth (https://download.pytorch.org/models/"
        "resnet101-63fe2227.pth) by detectron2's tools/convert-torchvision-to-d2.py "
        "(python convert-torchvision-to-d2.py resnet101-63fe2227.pth R-101.pkl); make it and pass its path"
    ),
}


_RESNETS = {(3, 4, 6, 3): "R50", (3, 4, 23, 3): "R101"}
_SWINS = {
    (96, (2, 2, 6, 2), (3, 6, 12, 24)): "Swin-T",
    (96, (2, 2, 18, 2), (3, 6, 12, 24)): "Swin-S",
    (128, (2, 2, 18, 2), (4, 8, 16, 32)): "Swin-B",
    (192, (2, 2, 18, 2), (6, 12, 24, 48)): "Swin-L",
}


def describe_backbone(fields) -> str:
    """ "R101 (res4 has 23 blocks)", "Swin-L (window 12)", ...: a backbone named by its fields.

    `fields`: a dict of `ModelConfig` fields (as `infer_model_config` returns) or a `ModelConfig`.
    """
    get = fields.get if isinstance(fields, dict) else lambda key, default=None: getattr(fields, key, default)
    if get("backbone", "resnet") == "swin":
        dim, depths, heads = get("swin_embed_dim"), tuple(get("swin_depths")), tuple(get("swin_num_heads"))
        name = _SWINS.get((dim, depths, heads), f"a Swin of width {dim}, depths {list(depths)}, heads {list(heads)}")
        return f"{name} (window {get('swin_window_size')})"
    blocks = tuple(get("backbone_stage_blocks"))
    return f"{_RESNETS.get(blocks, 'a ResNet')} (res4 has {blocks[2]} blocks)"
