"""Post-processing: hand-built logits pin each rule; random logits match the official code (a line-by-line
torch transcription of Mask2Former's `*_inference` + detectron2 `sem_seg_postprocess`) and, where HF follows
the official code, HF's `Mask2FormerImageProcessor.post_process_*`."""

import numpy as np
import pytest

from inference.postprocess import PostProcessor, instance_inference, masks_to_boxes, panoptic_inference

BIG = 20.0  # a mask logit whose sigmoid is 1 - 2e-9


def class_logits_for(classes, num_classes, confidence=8.0):
    """(Q, K+1) logits whose softmax puts ~all mass on `classes[q]` (K = no object)."""
    logits = np.zeros((len(classes), num_classes + 1), np.float32)
    logits[np.arange(len(classes)), classes] = confidence
    return logits


def box_mask(shape, y0, y1, x0, x1, inside=BIG, outside=-BIG):
    mask = np.full(shape, outside, np.float32)
    mask[y0:y1, x0:x1] = inside
    return mask


# ----------------------------------------------------------------------------------- panoptic
def test_panoptic_hand_built():
    """Classes: 0 person (thing), 1 sky (stuff), 2 dog (thing). 8 x 8 image."""
    shape = (8, 8)
    classes = [0, 1, 1, 2, 3, 2]  # 3 = no object
    masks = np.stack(
        [
            box_mask(shape, 0, 8, 0, 4),  # q0 person: left half
            box_mask(shape, 0, 4, 4, 8),  # q1 sky: top right
            box_mask(shape, 4, 8, 4, 8, inside=3.0),  # q2 sky again: bottom right -> merged with q1
            box_mask(shape, 0, 8, 2, 5, inside=1.0),  # q3 dog: mostly under q0 / q1 / q2 -> loses overlap test
            box_mask(shape, 0, 8, 0, 8),  # q4 no object: dropped
            box_mask(shape, 0, 8, 0, 8),  # q5 dog with a low score: dropped
        ]
    )
    logits = class_logits_for(classes, 3)
    logits[5] = [0, 0, 1.0, 0]  # best class dog but score ~0.47 < 0.8
    isthing = np.array([True, False, True])
    result = panoptic_inference(logits, masks, isthing)

    expected = np.zeros(shape, np.int32)
    expected[:, :4] = 1
    expected[:, 4:] = 2  # both sky queries share segment 2
    np.testing.assert_array_equal(result.segment_ids, expected)
    assert [(s["id"], s["category"], s["isthing"]) for s in result.segments] == [(1, 0, True), (2, 1, False)]


def test_panoptic_overlap_threshold_boundary_and_void_pixels():
    """A query keeps its segment at exactly area ratio 0.8 (official: drop only if < 0.8); pixels
    whose winning query has sigmoid < 0.5 stay 0."""
    shape = (1, 10)
    masks = np.stack([box_mask(shape, 0, 1, 0, 5), box_mask(shape, 0, 1, 4, 9, inside=1.0)])
    logits = class_logits_for([0, 1], 2, confidence=10.0)
    logits[0, 0] = 12.0  # q0 wins the shared pixel 4
    result = panoptic_inference(logits, masks, np.array([True, True]))
    # q1: argmax area 4 (pixels 5..8), sigmoid >= 0.5 area 5 -> ratio 0.8 -> kept; pixel 9 owned by nobody
    np.testing.assert_array_equal(result.segment_ids[0], [1, 1, 1, 1, 1, 2, 2, 2, 2, 0])
    result = panoptic_inference(logits, masks, np.array([True, True]), overlap_threshold=0.81)
    np.testing.assert_array_equal(result.segment_ids[0], [1, 1, 1, 1, 1, 0, 0, 0, 0, 0])


def test_panoptic_nothing_kept():
    result = panoptic_inference(class_logits_for([2, 2], 2), np.zeros((2, 4, 4), np.float32), np.ones(2, bool))
    assert result.segments == [] and not result.segment_ids.any()


# ----------------------------------------------------------------------------------- instance
def test_instance_hand_built():
    """Top-3 of the 4 (query, class) pairs; score = class probability x mean sigmoid inside logit > 0."""
    shape = (6, 8)
    masks = np.stack([box_mask(shape, 1, 3, 2, 5, inside=2.0), box_mask(shape, 0, 6, 0, 1, inside=0.5)])
    logits = np.array([[4.0, 0.0, 0.0], [0.0, 2.0, 0.0]], np.float32)  # K = 2, last column no object
    result = instance_inference(logits, masks, instances_per_image=3)

    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)  # q0: .96/.02, q1: .11/.79
    quality = 1 / (1 + np.exp(-np.array([2.0, 0.5])))  # mean sigmoid inside each mask
    # the pairs (q0, c0), (q1, c1), (q1, c0) beat (q0, c1)
    expected = [(probs[0, 0] * quality[0], 0, 0), (probs[1, 1] * quality[1], 1, 1), (probs[1, 0] * quality[1], 0, 1)]
    np.testing.assert_allclose(result.scores, [e[0] for e in expected], rtol=1e-5)
    np.testing.assert_array_equal(result.labels, [e[1] for e in expected])
    np.testing.assert_array_equal(result.masks.sum((1, 2)), [6, 6, 6])
    np.testing.assert_array_equal(result.boxes, [[2, 1, 5, 3], [0, 0, 1, 6], [0, 0, 1, 6]])


def test_masks_to_boxes():
    masks = np.zeros((3, 5, 7), bool)
    masks[0, 1:4, 2:6] = True
    masks[1, 4, 6] = True
    np.testing.assert_array_equal(masks_to_boxes(masks), [[2, 1, 6, 4], [6, 4, 7, 5], [0, 0, 0, 0]])


def test_instance_of_panoptic_model_keeps_things_only():
    logits = class_logits_for([0, 1], 2)
    masks = np.stack([box_mask((8, 8), 0, 4, 0, 4)] * 2).reshape(2, 8, 8)[:, ::4, ::4]  # (2, 2, 2) at 1/4
    post = PostProcessor("instance", isthing=[True, False], instances_per_image=4)
    (result,) = post({"pred_logits": logits[None], "pred_masks": masks[None]}, [(8, 8)], [(8, 8)])
    assert set(result.labels.tolist()) == {0}


# --------------------------------------------------------------- official code and HF transcription
torch = pytest.importorskip("torch")
F = torch.nn.functional


def official_postprocess(task, cls, masks, image_size, original_size, isthing):
    """Mask2Former `MaskFormer.forward` (inference branch) for one image, in torch, as in the official code."""
    mask_cls_result, mask_pred_result = torch.tensor(cls), torch.tensor(masks)[None]
    padded = (4 * masks.shape[-2], 4 * masks.shape[-1])
    mask_pred_result = F.interpolate(mask_pred_result, size=padded, mode="bilinear", align_corners=False)[0]

    def sem_seg_postprocess(result, img_size, output_height, output_width):
        result = result[:, : img_size[0], : img_size[1]].expand(1, -1, -1, -1)
        return F.interpolate(result, size=(output_height, output_width), mode="bilinear", align_corners=False)[0]

    num_classes = cls.shape[-1] - 1
    if task == "semantic":  # semantic-only model: sem_seg_postprocess_before_inference = False
        semseg = torch.einsum("qc,qhw->chw", F.softmax(mask_cls_result, dim=-1)[..., :-1], mask_pred_result.sigmoid())
        return sem_seg_postprocess(semseg, image_size, *original_size).argmax(0).numpy()
    mask_pred_result = sem_seg_postprocess(mask_pred_result, image_size, *original_size)
    if task == "panoptic":
        scores, labels = F.softmax(mask_cls_result, dim=-1).max(-1)
        mask_pred = mask_pred_result.sigmoid()
        keep = labels.ne(num_classes) & (scores > 0.8)
        cur_scores, cur_classes, cur_masks = scores[keep], labels[keep], mask_pred[keep]
        cur_prob_masks = cur_scores.view(-1, 1, 1) * cur_masks
        h, w = cur_masks.shape[-2:]
        panoptic_seg = torch.zeros((h, w), dtype=torch.int32)
        segments_info, current_segment_id = [], 0
        if cur_masks.shape[0] == 0:
            return panoptic_seg.numpy(), segments_info
        cur_mask_ids = cur_prob_masks.argmax(0)
        stuff_memory_list = {}
        for k in range(cur_classes.shape[0]):
            pred_class = cur_classes[k].item()
            thing = bool(isthing[pred_class])
            mask_area = (cur_mask_ids == k).sum().item()
            original_area = (cur_masks[k] >= 0.5).sum().item()
            mask = (cur_mask_ids == k) & (cur_masks[k] >= 0.5)
            if mask_area > 0 and original_area > 0 and mask.sum().item() > 0:
                if mask_area / original_area < 0.8:
                    continue
                if not thing:
                    if int(pred_class) in stuff_memory_list:
                        panoptic_seg[mask] = stuff_memory_list[int(pred_class)]
                        continue
                    stuff_memory_list[int(pred_class)] = current_segment_id + 1
                current_segment_id += 1
                panoptic_seg[mask] = current_segment_id
                segments_info.append({"id": current_segment_id, "isthing": thing, "category_id": int(pred_class)})
        return panoptic_seg.numpy(), segments_info
    scores = F.softmax(mask_cls_result, dim=-1)[:, :-1]
    labels = torch.arange(num_classes).unsqueeze(0).repeat(cls.shape[0], 1).flatten(0, 1)
    scores_per_image, topk_indices = scores.flatten(0, 1).topk(100, sorted=False)
    labels_per_image = labels[topk_indices]
    mask_pred = mask_pred_result[topk_indices // num_classes]
    pred_masks = (mask_pred > 0).float()
    mask_scores = (mask_pred.sigmoid().flatten(1) * pred_masks.flatten(1)).sum(1) / (
        pred_masks.flatten(1).sum(1) + 1e-6
    )
    queries = (topk_indices // num_classes).numpy()
    return (scores_per_image * mask_scores).numpy(), labels_per_image.numpy(), queries, pred_masks.numpy() > 0


def random_outputs(rng, num_queries, num_classes, mask_size):
    """Half the queries confident about a random class; masks = random boxes (+6 inside, -6 out) + noise."""
    cls = rng.normal(0, 3, (num_queries, num_classes + 1)).astype(np.float32)
    confident = num_queries // 2
    cls[np.arange(confident), rng.integers(0, num_classes, confident)] += 12.0
    masks = rng.normal(0, 1.5, (num_queries, *mask_size)).astype(np.float32) - 6.0
    height, width = mask_size
    for q in range(num_queries):
        y0, x0 = rng.integers(0, height - 2), rng.integers(0, width - 2)
        masks[q, y0 : rng.integers(y0 + 2, height + 1), x0 : rng.integers(x0 + 2, width + 1)] += 12.0
    return cls, masks


@pytest.mark.parametrize("task", ["instance", "panoptic", "semantic"])
def test_matches_official_code_with_padding(task):
    """Image resized to 70 x 101 inside a 96 x 128 padded input, original 53 x 77."""
    rng = np.random.default_rng(0)
    cls, masks = random_outputs(rng, 30, 7, (24, 32))
    isthing = np.array([True, True, False, True, False, True, False])
    post = PostProcessor(task, isthing=isthing)
    (ours,) = post({"pred_logits": cls[None], "pred_masks": masks[None]}, [(70, 101)], [(53, 77)])
    reference = official_postprocess(task, cls, masks, (70, 101), (53, 77), isthing)
    if task == "semantic":
        assert np.mean(ours.labels == reference) > 0.999
    elif task == "panoptic":
        seg, info = reference
        assert len(info) >= 3
        assert [(s["id"], s["category"]) for s in ours.segments] == [(s["id"], s["category_id"]) for s in info]
        assert np.mean(ours.segment_ids == seg) > 0.999
    else:
        scores, labels, queries, binary = reference
        keep = isthing[labels]  # panoptic model: things only
        reference_order = np.lexsort((labels[keep], queries[keep]))  # compare as sets of (query, class)
        our_order = np.lexsort((ours.labels, ours.queries))
        np.testing.assert_array_equal(ours.queries[our_order], queries[keep][reference_order])
        np.testing.assert_array_equal(ours.labels[our_order], labels[keep][reference_order])
        np.testing.assert_allclose(ours.scores[our_order], scores[keep][reference_order], rtol=1e-4, atol=1e-7)
        assert np.mean(ours.masks[our_order] == binary[keep][reference_order]) > 0.999
        assert np.all(np.diff(ours.scores) <= 0)


def hf_processor():
    transformers = pytest.importorskip("transformers")
    return transformers.Mask2FormerImageProcessor()


class HFOutputs:
    def __init__(self, cls, masks):
        self.class_queries_logits = torch.tensor(cls)[None]
        self.masks_queries_logits = torch.tensor(masks)[None]


def test_semantic_matches_hf():
    """HF resizes to 384 x 384 without cropping: equal to ours for an unpadded 384 x 384 input."""
    rng = np.random.default_rng(1)
    cls, masks = random_outputs(rng, 20, 5, (96, 96))
    hf = hf_processor().post_process_semantic_segmentation(HFOutputs(cls, masks), target_sizes=[(150, 230)])[0]
    (ours,) = PostProcessor("semantic")(
        {"pred_logits": cls[None], "pred_masks": masks[None]}, [(384, 384)], [(150, 230)]
    )
    assert np.mean(ours.labels == hf.numpy()) > 0.999


def test_instance_matches_hf():
    rng = np.random.default_rng(2)
    cls, masks = random_outputs(rng, 10, 4, (96, 96))
    hf = hf_processor().post_process_instance_segmentation(
        HFOutputs(cls, masks), threshold=0.0, return_binary_maps=True
    )[0]
    post = PostProcessor("instance", instances_per_image=10)  # HF keeps num_queries
    (ours,) = post({"pred_logits": cls[None], "pred_masks": masks[None]}, [(384, 384)], [(384, 384)])
    hf_scores = np.array([s["score"] for s in hf["segments_info"]])
    hf_labels = np.array([s["label_id"] for s in hf["segments_info"]])
    hf_masks = hf["segmentation"].numpy() > 0
    order = np.argsort(-hf_scores, kind="stable")
    nonempty = ours.masks.any((1, 2))  # HF drops empty masks
    np.testing.assert_allclose(ours.scores[nonempty], hf_scores[order], atol=1e-6)  # HF rounds to 6 digits
    np.testing.assert_array_equal(ours.labels[nonempty], hf_labels[order])
    assert np.mean(ours.masks[nonempty] == hf_masks[order]) > 0.999


# ----------------------------------------------------------------- the real (tiny) model's outputs
def test_real_model_outputs_are_cropped_and_resized_to_the_original_image():
    """A 45 x 70 image (resized to 50 x 78, padded to 64 x 96, masks 16 x 24): results of every task
    come back at 45 x 70, and the mask logits equal detectron2's `sem_seg_postprocess` (torch
    F.interpolate bilinear, align_corners=False: upsample x4, crop the padding, resize)."""
    from inference.postprocess import crop_and_resize, resize_bilinear
    from inference.predictor import Predictor, resize_for_test
    from model import build_model
    from model.checkpoints import load_detectron2_checkpoint
    from tests.helpers import tiny_config

    config = tiny_config()
    config.data.min_size_test, config.data.max_size_test = 50, 100
    config.inference.compile = "eager"  # the model is traced per Predictor otherwise: three times, seconds each
    network = build_model(config)
    load_detectron2_checkpoint(network, "tests/golden/tiny_detectron2.pkl")
    image = np.random.default_rng(0).integers(0, 256, (45, 70, 3), np.uint8)
    resized = resize_for_test(image, 50, 100)
    assert resized.shape[:2] == (50, 78)
    outputs = network(resized[None].astype(np.float32), training=False)
    assert tuple(outputs["pred_masks"].shape) == (1, 7, 16, 24)

    for task in ("instance", "panoptic", "semantic"):
        config.inference.task = task
        config.inference.object_mask_threshold = 0.0  # random weights: keep every panoptic query
        (result,) = Predictor(network, config)([image])
        size = {"instance": lambda r: r.masks.shape[1:], "panoptic": lambda r: r.segment_ids.shape}
        assert tuple(size.get(task, lambda r: r.labels.shape)(result)) == (45, 70), task

    torch = pytest.importorskip("torch")
    functional = torch.nn.functional
    logits = torch.from_numpy(np.array(outputs["pred_masks"]))
    expected = functional.interpolate(logits, size=(64, 96), mode="bilinear", align_corners=False)
    expected = functional.interpolate(expected[:, :, :50, :78], size=(45, 70), mode="bilinear", align_corners=False)
    ours = crop_and_resize(resize_bilinear(outputs["pred_masks"][0], (64, 96)), (50, 78), (45, 70))
    np.testing.assert_allclose(np.asarray(ours), expected[0].numpy(), rtol=0, atol=1e-4)


# ---------------------------------------------------------------------------------- memory bound
@pytest.mark.parametrize("task", ["instance", "panoptic", "semantic"])
def test_chunked_post_processing_equals_whole_arrays_exactly(task):
    """Making full-size masks a few queries (or classes) at a time gives the very same result as making all
    of them at once, and as the per-task functions on the whole (Q, H0, W0) array."""
    from inference.postprocess import crop_and_resize, resize_bilinear

    rng = np.random.default_rng(3)
    cls, masks = random_outputs(rng, 30, 7, (24, 32))
    cls[:12, -1] = -10.0  # confident queries, so that panoptic keeps several
    cls[np.arange(12), np.arange(12) % 7] = 10.0
    isthing = np.array([True, True, False, True, False, True, False])
    outputs = {"pred_logits": cls[None], "pred_masks": masks[None]}
    sizes = ([(70, 101)], [(53, 77)])
    whole = PostProcessor(task, isthing=isthing, object_mask_threshold=0.5, chunk_pixels=2**40)(outputs, *sizes)[0]
    one_at_a_time = PostProcessor(task, isthing=isthing, object_mask_threshold=0.5, chunk_pixels=1)(outputs, *sizes)[0]
    three = PostProcessor(task, isthing=isthing, object_mask_threshold=0.5, chunk_pixels=3 * 96 * 128)(outputs, *sizes)
    for result in (one_at_a_time, three[0]):
        for name, value in vars(whole).items():
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(getattr(result, name), value, err_msg=name)
            else:
                assert getattr(result, name) == value, name
    if task != "semantic":  # the same as the per-task rule on every query's full-size mask
        full = crop_and_resize(resize_bilinear(masks, (96, 128)), (70, 101), (53, 77))
        if task == "panoptic":
            reference = panoptic_inference(cls, full, isthing, 0.5)
            np.testing.assert_array_equal(whole.segment_ids, reference.segment_ids)
            assert whole.segments == reference.segments and len(whole.segments) >= 3
        else:
            reference = instance_inference(cls, full, 100, isthing)
            np.testing.assert_array_equal(whole.masks, reference.masks)
            np.testing.assert_array_equal(whole.scores, reference.scores)
            assert whole.masks[0].T.flags["C_CONTIGUOUS"]  # column-major per mask, for RLE encoding


def test_min_score_keeps_exactly_the_results_that_reach_it():
    """test.py draws and writes only results scoring >= its threshold: min_score makes only those."""
    rng = np.random.default_rng(5)
    cls, masks = random_outputs(rng, 30, 7, (24, 32))
    outputs, sizes = {"pred_logits": cls[None], "pred_masks": masks[None]}, ([(70, 101)], [(53, 77)])
    (everything,) = PostProcessor("instance")(outputs, *sizes)
    (kept,) = PostProcessor("instance", min_score=0.5)(outputs, *sizes)
    reaching = everything.scores >= 0.5
    assert 0 < reaching.sum() < len(everything.scores) and len(kept.scores) >= reaching.sum()
    np.testing.assert_array_equal(kept.scores[kept.scores >= 0.5], everything.scores[reaching])
    np.testing.assert_array_equal(kept.masks[kept.scores >= 0.5], everything.masks[reaching])
