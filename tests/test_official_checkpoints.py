"""Checkpoints laid out as the released model-zoo files, written independently of our own exporter.

`official_state` lists the tensors of the official `MaskFormer(cfg).state_dict()` from the official
modules (detectron2 `ResNet` + `BottleneckBlock` with `FrozenBatchNorm2d`, Mask2Former's
`MSDeformAttnPixelDecoder` and `MultiScaleMaskedTransformerDecoder`, `SetCriterion.empty_weight`), with
the learnable queries under the released files' legacy name `sem_seg_head.predictor.static_query.weight`.
`pixel_mean` / `pixel_std` are non-persistent buffers, so they are not in the state dict. The file is
written as the released ones are: `{"model": OrderedDict(name -> float32 ndarray), "__author__": ...}`,
pickle protocol 2, the OrderedDict carrying torch's `_metadata` (module versions; the decoder has none,
which is why the official loader renames `static_query`).

Names and their count are the real ones (R50: the real 3/4/6/3 blocks, R101: 3/4/23/3, 9 decoder layers,
6 encoder layers, 100 queries, 80 or 133 classes); the widths are narrow (stem 16, res2 32, transformer 32)
so that the four conversions take seconds instead of minutes.
"""

import collections
import pickle
from types import SimpleNamespace

import numpy as np
import pytest

from cli import architecture_mismatch
from config import Mask2FormerConfig
from inference.loading import ModelLoadError, load_model
from model import build_model
from model.checkpoints import (
    CheckpointError,
    infer_model_config,
    read_detectron2_checkpoint,
    to_detectron2_state,
)
from model_zoo import describe_backbone
from tools.convert_detectron2_checkpoint import convert, convert_checkpoint
from training.initialization import load_backbone, load_for_finetuning, resolve_weights

NARROW = {"stem": 16, "res2": 32, "dim": 32, "heads": 4, "ffn": 64, "enc_ffn": 64}
FULL = {"stem": 64, "res2": 256, "dim": 256, "heads": 8, "ffn": 2048, "enc_ffn": 1024}


def official_shapes(depths, num_classes, num_queries=100, widths=FULL, points=4, dec_layers=9, enc_layers=6):
    """Name -> shape of the official MaskFormer(cfg).state_dict(), in module order."""
    shapes = {}
    stem, res2, d, heads = widths["stem"], widths["res2"], widths["dim"], widths["heads"]

    def conv(name, cout, cin, k, bias=False, norm="frozen_bn"):  # detectron2 Conv2d(norm=...)
        shapes[f"{name}.weight"] = (cout, cin, k, k)
        if bias:
            shapes[f"{name}.bias"] = (cout,)
        suffixes = ("weight", "bias", "running_mean", "running_var") if norm == "frozen_bn" else ("weight", "bias")
        for suffix in suffixes if norm else ():
            shapes[f"{name}.norm.{suffix}"] = (cout,)

    def linear(name, cout, cin):
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (cout, cin), (cout,)

    def layer_norm(name, c):
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (c,), (c,)

    conv("backbone.stem.conv1", stem, 3, 7)
    cin = stem
    for stage, blocks in enumerate(depths):
        out = res2 * 2**stage
        for block in range(blocks):
            prefix = f"backbone.res{stage + 2}.{block}"
            if block == 0:
                conv(f"{prefix}.shortcut", out, cin, 1)
            conv(f"{prefix}.conv1", out // 4, cin, 1)
            conv(f"{prefix}.conv2", out // 4, out // 4, 3)
            conv(f"{prefix}.conv3", out, out // 4, 1)
            cin = out

    pd = "sem_seg_head.pixel_decoder"
    for i, channels in enumerate((res2 * 8, res2 * 4, res2 * 2)):  # res5, res4, res3
        conv(f"{pd}.input_proj.{i}.0", d, channels, 1, bias=True, norm=None)
        layer_norm(f"{pd}.input_proj.{i}.1", d)  # GroupNorm
    shapes[f"{pd}.transformer.level_embed"] = (3, d)
    for i in range(enc_layers):
        prefix = f"{pd}.transformer.encoder.layers.{i}"
        linear(f"{prefix}.self_attn.sampling_offsets", heads * 3 * points * 2, d)
        linear(f"{prefix}.self_attn.attention_weights", heads * 3 * points, d)
        linear(f"{prefix}.self_attn.value_proj", d, d)
        linear(f"{prefix}.self_attn.output_proj", d, d)
        layer_norm(f"{prefix}.norm1", d)
        linear(f"{prefix}.linear1", widths["enc_ffn"], d)
        linear(f"{prefix}.linear2", d, widths["enc_ffn"])
        layer_norm(f"{prefix}.norm2", d)
    conv(f"{pd}.mask_features", d, d, 1, bias=True, norm=None)
    conv(f"{pd}.adapter_1", d, res2, 1, norm="group_norm")
    conv(f"{pd}.layer_1", d, d, 3, norm="group_norm")

    pr = "sem_seg_head.predictor"
    for i in range(dec_layers):
        for kind, attention in (("self", "self_attn"), ("cross", "multihead_attn")):
            prefix = f"{pr}.transformer_{kind}_attention_layers.{i}"
            shapes[f"{prefix}.{attention}.in_proj_weight"] = (3 * d, d)
            shapes[f"{prefix}.{attention}.in_proj_bias"] = (3 * d,)
            linear(f"{prefix}.{attention}.out_proj", d, d)
            layer_norm(f"{prefix}.norm", d)
        prefix = f"{pr}.transformer_ffn_layers.{i}"
        linear(f"{prefix}.linear1", widths["ffn"], d)
        linear(f"{prefix}.linear2", d, widths["ffn"])
        layer_norm(f"{prefix}.norm", d)
    layer_norm(f"{pr}.decoder_norm", d)
    shapes[f"{pr}.static_query.weight"] = (num_queries, d)  # the released files' name for query_feat
    shapes[f"{pr}.query_embed.weight"] = (num_queries, d)
    shapes[f"{pr}.level_embed.weight"] = (3, d)
    linear(f"{pr}.class_embed", num_classes + 1, d)
    for i in range(3):
        linear(f"{pr}.mask_embed.layers.{i}", d, d)
    shapes["criterion.empty_weight"] = (num_classes + 1,)
    return shapes


def write_released_pickle(path, shapes, seed=0):
    """Random float32 values under `shapes`, pickled as a released model_final_*.pkl."""
    rng = np.random.default_rng(seed)
    state = collections.OrderedDict()
    for name, shape in shapes.items():
        if name.endswith("running_var") or name.endswith("norm.weight"):
            value = rng.uniform(0.5, 1.5, shape)
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 10
            value = rng.normal(0.0, 1.0 / np.sqrt(fan_in), shape)
        state[name] = value.astype(np.float32)
    state._metadata = collections.OrderedDict(
        [("", {"version": 1}), ("sem_seg_head", {"version": 2}), ("sem_seg_head.predictor", {})]
    )
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "maskformer2"}, f, protocol=2)
    return state


def narrow_config(depths, num_classes, task) -> Mask2FormerConfig:
    config = Mask2FormerConfig()
    m = config.model
    m.backbone_stage_blocks, m.num_classes = tuple(depths), num_classes
    m.backbone_stem_channels, m.backbone_res2_channels = NARROW["stem"], NARROW["res2"]
    m.hidden_dim = m.pixel_decoder_dim = m.mask_dim = NARROW["dim"]
    m.num_heads, m.decoder_ffn_dim, m.encoder_ffn_dim = NARROW["heads"], NARROW["ffn"], NARROW["enc_ffn"]
    config.inference.task = task
    return config.validate()


@pytest.fixture(scope="module")
def r50_model():
    """The narrow 80-class R50, shared by the tests below that only load into it or are refused."""
    return build_model(narrow_config((3, 4, 6, 3), 80, "instance"))


CASES = {
    "r50_instance": ((3, 4, 6, 3), 80, "instance", "R50 (res4 has 6 blocks)"),
    "r50_panoptic": ((3, 4, 6, 3), 133, "panoptic", "R50 (res4 has 6 blocks)"),
    "r101_instance": ((3, 4, 23, 3), 80, "instance", "R101 (res4 has 23 blocks)"),
    "r101_panoptic": ((3, 4, 23, 3), 133, "panoptic", "R101 (res4 has 23 blocks)"),
}


def test_the_released_layout_has_the_official_tensor_count():
    # R50 COCO instance: 44.0M parameters (REFERENCE.md, HF counts 44.02M incl. BN affine); the state dict
    # also holds the BN running statistics (53 norms) and criterion.empty_weight (81).
    shapes = official_shapes((3, 4, 6, 3), 80)
    n_params = sum(int(np.prod(s)) for n, s in shapes.items() if "running_" not in n and not n.startswith("crit"))
    assert round(n_params / 1e6, 1) == 44.0
    # 265 backbone tensors and 557 network tensors in all (the official loader's counts), + empty_weight
    assert "sem_seg_head.predictor.static_query.weight" in shapes and len(shapes) == 558
    assert sum(n.startswith("backbone.") for n in shapes) == 265
    assert len(official_shapes((3, 4, 23, 3), 80)) == 558 + 17 * 15  # R101: 17 more res4 blocks of 15 tensors


def _check_loaded_and_runs(model, written, num_classes):
    """Every written tensor is where its name says, and the model predicts."""
    exported = to_detectron2_state(model)
    assert set(exported) | {"criterion.empty_weight"} == {n.replace("static_query", "query_feat") for n in written}
    for name, value in written.items():
        if name != "criterion.empty_weight":
            np.testing.assert_array_equal(exported[name.replace("static_query", "query_feat")], value, err_msg=name)
    images = np.random.default_rng(1).uniform(0, 255, (1, 64, 96, 3)).astype(np.float32)
    outputs = model(images)
    assert outputs["pred_logits"].shape == (1, 100, num_classes + 1)
    assert outputs["pred_masks"].shape == (1, 100, 16, 24)
    assert np.isfinite(np.asarray(outputs["pred_masks"])).all()


@pytest.mark.parametrize("case", ["r50_instance", pytest.param("r101_instance", marks=pytest.mark.slow)])
def test_released_pickle_converts_and_runs(tmp_path, case):
    depths, num_classes, _, backbone = CASES[case]
    path = tmp_path / "model_final_000000.pkl"
    written = write_released_pickle(path, official_shapes(depths, num_classes, widths=NARROW))
    model, config, report = convert_checkpoint(str(path), num_heads=NARROW["heads"])  # the converter's path
    assert describe_backbone(config.model) == backbone
    assert (config.model.num_classes, config.model.num_queries, config.model.num_decoder_layers) == (
        num_classes,
        100,
        9,
    )
    assert report.ignored == ["criterion.empty_weight"] and not report.unexpected and report.ok
    _check_loaded_and_runs(model, written, num_classes)


@pytest.mark.parametrize("case", ["r50_panoptic", pytest.param("r101_panoptic", marks=pytest.mark.slow)])
def test_released_pickle_loads_for_test_py_and_runs(tmp_path, case):
    depths, num_classes, task, _ = CASES[case]
    path = tmp_path / "model_final_000000.pkl"
    written = write_released_pickle(path, official_shapes(depths, num_classes, widths=NARROW))
    model = load_model(narrow_config(depths, num_classes, task), weights_path=str(path))  # test.py --weights
    _check_loaded_and_runs(model, written, num_classes)


def test_released_pickle_fine_tunes_on_other_classes(tmp_path):
    path = tmp_path / "model_final_94dc52.pkl"
    written = write_released_pickle(path, official_shapes((3, 4, 6, 3), 133, widths=NARROW))
    model = build_model(narrow_config((3, 4, 6, 3), 12, "instance"))
    summary = load_for_finetuning(model, str(path))  # train.init_checkpoint
    assert summary.endswith("class head re-initialised (133 -> 12 classes); ignored criterion.empty_weight")
    np.testing.assert_array_equal(
        model.transformer_decoder.query_feat.numpy(), written["sem_seg_head.predictor.static_query.weight"]
    )


def test_converter_writes_the_architecture_it_read(tmp_path):
    path = tmp_path / "model_final_000000.pkl"
    write_released_pickle(path, official_shapes((3, 4, 6, 3), 133, widths=NARROW))
    message = convert(str(path), str(tmp_path / "m.keras"), num_heads=NARROW["heads"])
    assert message.endswith("(R50 (res4 has 6 blocks), 133 classes, 100 queries, 9 decoder layers)")
    assert "ignored, no counterpart in the network: criterion.empty_weight" in message
    assert "missing" not in message and "unexpected" not in message
    assert (tmp_path / "m.keras").stat().st_size > 0


def test_r101_file_into_an_r50_model_is_one_sentence(tmp_path, r50_model):
    path = tmp_path / "model_final_eba159.pkl"
    write_released_pickle(path, official_shapes((3, 4, 23, 3), 80, widths=NARROW))
    r50 = narrow_config((3, 4, 6, 3), 80, "instance")
    with pytest.raises(ModelLoadError) as error:  # test.py --weights
        load_model(r50, weights_path=str(path))
    message = str(error.value)
    assert "\n" not in message
    assert "the checkpoint is R101 (res4 has 23 blocks), the configured model R50 (res4 has 6 blocks)" in message
    assert "--set model.backbone_stage_blocks=[3,4,23,3]" in message

    with pytest.raises(CheckpointError, match=r"is R101 \(res4 has 23 blocks\), the configured model R50"):
        load_for_finetuning(r50_model, str(path))  # train.init_checkpoint


def test_full_size_mismatch_names_the_preset_to_use():
    # Shapes only (no values): the full-size R101 COCO panoptic file against the default R50 instance config.
    state = {n: SimpleNamespace(shape=s) for n, s in official_shapes((3, 4, 23, 3), 133).items()}
    found = infer_model_config(state)
    message = architecture_mismatch(found, Mask2FormerConfig().model, "model_final_b807bd.pkl")
    assert message == (
        "checkpoint model_final_b807bd.pkl has num_classes=133, backbone_stage_blocks=[3,4,23,3] but the config "
        "says 80, [3,4,6,3] (the checkpoint is R101 (res4 has 23 blocks), the configured model R50 (res4 has 6 "
        "blocks)); use --preset coco_panoptic_r101, or pass --set model.num_classes=133 "
        "model.backbone_stage_blocks=[3,4,23,3]"
    )
    assert architecture_mismatch(found, Mask2FormerConfig.preset("coco_panoptic_r101").model, "x") is None


def test_unexpected_tensors_are_listed_by_group(tmp_path, r50_model):
    from model.checkpoints import load_detectron2_state

    state = {n.replace("static_query", "query_feat"): np.zeros(s, np.float32) for n, s in
             official_shapes((3, 4, 23, 3), 80, widths=NARROW).items()}  # fmt: skip
    with pytest.raises(CheckpointError) as error:
        load_detectron2_state(r50_model, state)  # the Python API, without the architecture check
    message = str(error.value)
    assert "unexpected, not used (255): backbone.res4.{6..22}.* (255)" in message
    assert len(message) < 400


def test_caffe2_msra_backbone_is_one_sentence(tmp_path):
    path = tmp_path / "R-50.pkl"
    blobs = {"conv1_w": np.zeros((64, 3, 7, 7), np.float32), "res_conv1_bn_s": np.ones(64, np.float32)}
    blobs |= {"res2_0_branch2a_w": np.zeros((64, 64, 1, 1), np.float32), "res2_0_branch2a_w_momentum": np.zeros(1)}
    with open(path, "wb") as f:
        pickle.dump({"blobs": blobs}, f, protocol=2)
    with pytest.raises(CheckpointError) as error:
        read_detectron2_checkpoint(str(path))
    message = str(error.value)
    assert "Caffe2-named MSRA ResNet weights" in message and "BGR" in message and "torchvision" in message
    assert "\n" not in message and len(message) < 400


def test_r101_imagenet_weights_explain_how_to_make_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match=r"convert-torchvision-to-d2\.py.*resnet101-63fe2227\.pth"):
        resolve_weights("R-101.pkl")


def test_backbone_load_reports_once_and_consistently(tmp_path, r50_model):
    shapes = official_shapes((3, 4, 6, 3), 80, widths=NARROW)
    backbone = {n[len("backbone.") :]: s for n, s in shapes.items() if n.startswith("backbone.")}
    backbone |= {"stem.fc.weight": (1000, 256), "stem.fc.bias": (1000,)}  # torchvision's classifier, unused
    write_released_pickle(tmp_path / "R-50.pkl", backbone)
    model = r50_model
    assert load_backbone(model, str(tmp_path / "R-50.pkl")) == f"backbone from {tmp_path / 'R-50.pkl'}: 265 tensors"

    del backbone["res5.2.conv3.norm.running_var"]
    write_released_pickle(tmp_path / "broken.pkl", backbone)
    with pytest.raises(CheckpointError) as error:
        load_backbone(model, str(tmp_path / "broken.pkl"))
    message = str(error.value)
    assert "nothing was loaded" in message and "backbone.res5.2.conv3.norm.running_var" in message
    assert "loaded 265" not in message and "\n" not in message


def official_swin_shapes(dim, depths, heads, window, num_classes=80, num_queries=100):
    """Name -> shape of an official D2SwinTransformer Mask2Former (the names of the released checkpoints)."""
    shapes = {"backbone.patch_embed.proj.weight": (dim, 3, 4, 4), "backbone.patch_embed.proj.bias": (dim,)}
    shapes |= {"backbone.patch_embed.norm.weight": (dim,), "backbone.patch_embed.norm.bias": (dim,)}
    for i, (depth, n_heads) in enumerate(zip(depths, heads, strict=True)):
        c = dim * 2**i
        for j in range(depth):
            p = f"backbone.layers.{i}.blocks.{j}"
            shapes |= {f"{p}.norm1.weight": (c,), f"{p}.norm1.bias": (c,), f"{p}.norm2.weight": (c,)}
            shapes |= {f"{p}.attn.relative_position_bias_table": ((2 * window - 1) ** 2, n_heads)}
            shapes |= {f"{p}.attn.relative_position_index": (window**2, window**2)}
            shapes |= {f"{p}.attn.qkv.weight": (3 * c, c), f"{p}.attn.proj.weight": (c, c)}
            shapes |= {f"{p}.mlp.fc1.weight": (4 * c, c), f"{p}.mlp.fc2.weight": (c, 4 * c)}
        if i < 3:
            shapes |= {f"backbone.layers.{i}.downsample.reduction.weight": (2 * c, 4 * c)}
        shapes |= {f"backbone.norm{i}.weight": (c,), f"backbone.norm{i}.bias": (c,)}
    # the head is the ResNet one with the backbone's channels (res2 = dim: input_proj takes 8, 4, 2 x dim)
    head = official_shapes((1, 1, 1, 1), num_classes, num_queries, widths={**FULL, "res2": dim})
    return shapes | {n: s for n, s in head.items() if not n.startswith("backbone.")}


@pytest.mark.parametrize(
    "name, dims, expected, preset",
    [
        ("T", (96, (2, 2, 6, 2), (3, 6, 12, 24), 7), "Swin-T (window 7)", "coco_instance_swin_t"),
        ("L", (192, (2, 2, 18, 2), (6, 12, 24, 48), 12), "Swin-L (window 12)", "coco_instance_swin_l_in21k"),
    ],
)
def test_swin_architecture_is_read_from_the_shapes(name, dims, expected, preset):
    queries = 200 if name == "L" else 100
    state = {n: SimpleNamespace(shape=s) for n, s in official_swin_shapes(*dims, num_queries=queries).items()}
    found = infer_model_config(state)
    assert describe_backbone(found) == expected
    assert (found["swin_embed_dim"], found["swin_depths"], found["swin_num_heads"], found["swin_window_size"]) == dims
    assert architecture_mismatch(found, Mask2FormerConfig.preset(preset).model, "m.pkl") is None
    message = architecture_mismatch(found, Mask2FormerConfig().model, "m.pkl")
    assert (
        f"(the checkpoint is {expected}, the configured model R50 (res4 has 6 blocks)); use --preset {preset}"
        in message
    )
