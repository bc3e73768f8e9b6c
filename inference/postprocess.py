"""Model outputs -> semantic, panoptic or instance results, exactly as the official Mask2Former.

Official code: facebookresearch/Mask2Former `mask_former_model.py` (`semantic_inference`,
`panoptic_inference`, `instance_inference`, detectron2 `sem_seg_postprocess`):

- Mask logits (Q, Hp/4, Wp/4) are upsampled bilinearly to the padded input (Hp, Wp), the padding is
  cropped to the resized image (h, w), and the result is resized to the original image (H0, W0);
  bilinear with align_corners=False (half-pixel centres) throughout.
- Instance and panoptic post-process the mask logits first; a semantic-only model (the official
  semantic configs) forms the (K, Hp, Wp) class probabilities first and then crops and resizes them.
- Instance boxes are not predicted: we derive them from the masks (detectron2's
  `BitMasks.get_bounding_boxes`: [x0, y0, x1 + 1, y1 + 1]).

Where Hugging Face's `Mask2FormerImageProcessor.post_process_*` differs from the official code (and
we follow the official code): HF first resizes masks to a fixed 384 x 384 and never crops padding;
its panoptic step thresholds `score * sigmoid` (not `sigmoid`) at 0.5 for the original area, keeps a
segment only when the area ratio is strictly > 0.8 (official: >= 0.8), paints the whole argmax region
(official: only where sigmoid >= 0.5), merges stuff only for `label_ids_to_fuse`, and can reuse a
segment id after a merge; its instance step keeps all classes of panoptic models and resizes binary
masks with nearest-neighbour.

The rules (resizing, top-k, mask quality, boxes, panoptic candidates and segment ids, semantic
probabilities) are `keras.ops` functions, run on the accelerator here and traced into the exported
graph by `inference/export.py`; NumPy keeps the bookkeeping of one image (chunks of full-size masks,
running argmax, result arrays).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from keras import ops

TASKS = ("instance", "panoptic", "semantic")


@dataclass
class InstanceResult:
    """Instances of one image at its original size, highest score first."""

    masks: np.ndarray  # bool (N, H0, W0)
    scores: np.ndarray  # float32 (N,) class score x mean mask probability
    labels: np.ndarray  # int64 (N,) contiguous class indices
    queries: np.ndarray  # int64 (N,) the query each instance comes from
    boxes: np.ndarray  # float32 (N, 4) [x0, y0, x1, y1], x1/y1 exclusive


@dataclass
class PanopticResult:
    """Panoptic segmentation of one image: segment ids from 1; 0 = no segment."""

    segment_ids: np.ndarray  # int32 (H0, W0)
    segments: list[dict] = field(default_factory=list)  # {"id", "category" (contiguous), "isthing", "score"}


@dataclass
class SemanticResult:
    """Per-pixel class of one image."""

    labels: np.ndarray  # int32 (H0, W0) contiguous class indices


# ---------------------------------------------------------- the rules (also traced by inference/export.py)
def resize_bilinear(x, size):
    """(C, H, W) -> (C, *size), bilinear with half-pixel centres (torch align_corners=False), no antialias.

    `size`: two ints, or an int32 (2,) tensor inside a TensorFlow graph (the exported model), which goes
    to `tf.image.resize` (what `ops.image.resize` runs on TensorFlow; it takes no traced size)."""
    if isinstance(size, tuple | list):
        if tuple(x.shape[-2:]) == tuple(size):
            return x
        return ops.image.resize(x, size, interpolation="bilinear", antialias=False, data_format="channels_first")
    import tensorflow as tf

    resized = tf.image.resize(tf.transpose(x, (1, 2, 0)), size, method="bilinear", antialias=False)
    return tf.transpose(resized, (2, 0, 1))


def crop_and_resize(x, image_size, original_size):
    """detectron2 `sem_seg_postprocess`: (C, Hp, Wp) -> crop to `image_size` -> resize to `original_size`."""
    return resize_bilinear(x[:, : image_size[0], : image_size[1]], original_size)


def mask_boxes(masks):
    """(N, H, W) bool -> (N, 4) float32 [x0, y0, x1 + 1, y1 + 1] (detectron2 `BitMasks.get_bounding_boxes`);
    empty masks give zeros."""
    if masks.shape[0] == 0:
        return ops.zeros((0, 4), "float32")
    columns, rows = ops.any(masks, axis=1), ops.any(masks, axis=2)  # [N, W], [N, H]
    width, height = ops.shape(columns)[1], ops.shape(rows)[1]

    def first(v):  # [N, L] -> index of the first True of each row
        return ops.cast(ops.argmax(ops.cast(v, "int32"), axis=1), "int32")

    boxes = ops.stack(
        [first(columns), first(rows), width - first(ops.flip(columns, 1)), height - first(ops.flip(rows, 1))], axis=1
    )
    return ops.where(ops.any(columns, axis=1)[:, None], ops.cast(boxes, "float32"), 0.0)


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """`mask_boxes` of NumPy masks, as NumPy."""
    return ops.convert_to_numpy(mask_boxes(masks))


def top_k_pairs(class_logits, k: int):
    """Official instance top-k: the k best of softmax[:, :K] over all (query, class) pairs of (Q, K+1) logits
    -> (scores (k,) float32, labels (k,) = index % K, queries (k,) = index // K), best first."""
    num_classes = class_logits.shape[-1] - 1
    class_probs = ops.softmax(ops.cast(class_logits, "float32"), axis=-1)[:, :-1]
    top_scores, top_index = ops.top_k(ops.reshape(class_probs, (-1,)), k)
    return top_scores, top_index % num_classes, top_index // num_classes


def mask_quality(logits):
    """(n, H, W) mask logits -> (n,) mean sigmoid inside each mask (logit > 0): an instance's score factor."""
    binary = ops.cast(logits > 0, "float32")
    return ops.sum(ops.sigmoid(logits) * binary, axis=(1, 2)) / (ops.sum(binary, axis=(1, 2)) + 1e-6)


def panoptic_candidates(class_logits, object_mask_threshold: float):
    """(Q, K+1) logits -> best class score (Q,), its class (Q,), and whether the query is kept (Q,) bool:
    its best class is not no-object and scores more than `object_mask_threshold`."""
    num_classes = class_logits.shape[-1] - 1
    probs = ops.softmax(ops.cast(class_logits, "float32"), axis=-1)
    scores, labels = ops.max(probs, axis=-1), ops.argmax(probs, axis=-1)
    return scores, labels, (labels != num_classes) & (scores > object_mask_threshold)


def panoptic_segments(labels, thing, argmax_area, original_area, segment_area, overlap_threshold: float):
    """Official segment ids of the n kept queries, in query order: (segment id (n,) int32, 0 = none; whether
    the query opens a new segment (n,) bool).

    labels, thing: each kept query's class and whether it is a thing class; areas (n,): pixels it wins
    (argmax), pixels of its own mask (sigmoid >= 0.5), pixels it wins inside its mask. A query keeps a
    segment when all three are > 0 and argmax / own >= `overlap_threshold`; a stuff query joins the
    segment of the first kept query of its class; ids count from 1.
    """
    labels, thing = ops.convert_to_tensor(labels), ops.convert_to_tensor(thing)
    argmax_area, original_area = ops.convert_to_tensor(argmax_area), ops.convert_to_tensor(original_area)
    ratio = ops.cast(argmax_area, "float64") / ops.cast(ops.maximum(original_area, 1), "float64")
    valid = (argmax_area > 0) & (original_area > 0) & (ops.convert_to_tensor(segment_area) > 0)
    valid = valid & ~(ratio < overlap_threshold)
    n = ops.shape(labels)[0]
    index = ops.arange(n)
    earlier = index[None, :] < index[:, None]  # [k, j]: j < k
    same_stuff = earlier & (labels[:, None] == labels[None, :]) & (valid & ~thing)[None, :]
    merged = valid & ~thing & ops.any(same_stuff, axis=1)
    new = valid & ~merged
    new_id = ops.cumsum(ops.cast(new, "int32"))
    # the earlier query of the same stuff class that opened a segment: there is exactly one
    joined = ops.sum(ops.where(same_stuff & new[None, :], new_id[None, :], 0), axis=1)
    return ops.where(new, new_id, ops.where(merged, joined, 0)), new


# ------------------------------------------------------------------------------- per-task rules
CHUNK_PIXELS = 2**25  # full-resolution mask values (float32: 128 MB) processed at a time


def _mask_source(mask_logits):
    """`mask_logits` (Q, H, W) as a function query indices -> their (n, H, W) float32 logits (or that function)."""
    if callable(mask_logits):
        return mask_logits
    return lambda queries: ops.cast(ops.take(mask_logits, queries, axis=0), "float32")


def _chunks(count: int, size: int):
    for start in range(0, count, size):
        yield start, min(count, start + size)


def _reorder_rows(array: np.ndarray, order: np.ndarray) -> None:
    """array[:] = array[order] in place, one row of scratch memory (following the permutation's cycles)."""
    placed = np.zeros(len(order), bool)
    for start in range(len(order)):
        if placed[start]:
            continue
        saved, i = array[start].copy(), start
        while True:
            placed[i] = True
            j = order[i]
            if j == start:
                array[i] = saved
                break
            array[i] = array[j]
            i = j


def semantic_inference(class_logits, mask_logits):
    """(Q, K+1), (Q, H, W) -> (K, H, W) class probabilities: einsum(softmax[:, :K], sigmoid)."""
    class_probs = ops.softmax(ops.cast(class_logits, "float32"), axis=-1)[:, :-1]
    mask_probs = ops.sigmoid(ops.cast(mask_logits, "float32"))
    return ops.einsum("qc,qhw->chw", class_probs, mask_probs)


def panoptic_inference(
    class_logits,
    mask_logits,
    isthing: np.ndarray,
    object_mask_threshold: float = 0.8,
    overlap_threshold: float = 0.8,
    *,
    output_size: tuple[int, int] | None = None,
    chunk: int | None = None,
) -> PanopticResult:
    """Official `panoptic_inference` on (Q, K+1) logits and (Q, H, W) mask logits at output size.

    Keeps queries whose best class is not no-object with score > `object_mask_threshold`; each pixel
    goes to the kept query with the highest score x sigmoid; a query keeps its segment (its pixels with
    sigmoid >= 0.5) only if its argmax area / its sigmoid >= 0.5 area >= `overlap_threshold`;
    segments of one stuff class merge; ids count from 1.

    `mask_logits` may also be a function query indices -> their (n, H, W) logits at `output_size`: then
    only the kept queries are made, `chunk` at a time (a running argmax; the same result).
    """
    scores, labels, kept = (ops.convert_to_numpy(v) for v in panoptic_candidates(class_logits, object_mask_threshold))
    keep = np.nonzero(kept)[0]
    height, width = output_size or tuple(mask_logits.shape[-2:])
    result = PanopticResult(np.zeros((height, width), dtype=np.int32))
    if len(keep) == 0:
        return result

    source = _mask_source(mask_logits)
    best = np.full((height, width), -np.inf, np.float32)  # running max of score x sigmoid over kept queries
    owner = np.zeros((height, width), np.int64)  # its index into `keep` (the first on ties, as argmax)
    owner_prob = np.zeros((height, width), np.float32)
    original_area = np.zeros(len(keep), np.int64)
    for start, stop in _chunks(len(keep), chunk or len(keep)):
        masks = ops.sigmoid(source(keep[start:stop]))  # [n, H, W]
        weighted = ops.convert_to_tensor(scores[keep[start:stop]])[:, None, None] * masks
        chunk_owner = ops.argmax(weighted, axis=0)  # [H, W]
        chunk_best = ops.convert_to_numpy(ops.take_along_axis(weighted, chunk_owner[None], axis=0)[0])
        chunk_prob = ops.convert_to_numpy(ops.take_along_axis(masks, chunk_owner[None], axis=0)[0])
        original_area[start:stop] = ops.convert_to_numpy(ops.sum(ops.cast(masks >= 0.5, "int32"), axis=(1, 2)))
        better = chunk_best > best
        best[better] = chunk_best[better]
        owner[better] = ops.convert_to_numpy(chunk_owner)[better] + start
        owner_prob[better] = chunk_prob[better]
        del masks, weighted
    inside = owner_prob >= 0.5  # owner's own mask covers the pixel
    argmax_area = np.bincount(owner.ravel(), minlength=len(keep))
    segment_area = np.bincount(owner[inside], minlength=len(keep))

    kept_labels = labels[keep]
    thing = np.asarray(isthing, bool)[kept_labels]
    segment_of_query, new = (
        ops.convert_to_numpy(v)
        for v in panoptic_segments(kept_labels, thing, argmax_area, original_area, segment_area, overlap_threshold)
    )
    result.segments = [
        {
            "id": int(segment_of_query[k]),
            "category": int(kept_labels[k]),
            "isthing": bool(thing[k]),
            "score": float(scores[keep[k]]),
        }
        for k in np.nonzero(new)[0]
    ]
    result.segment_ids = np.where(inside, segment_of_query[owner], 0).astype(np.int32)
    return result


def instance_inference(
    class_logits,
    mask_logits,
    instances_per_image: int = 100,
    thing_classes_only: np.ndarray | None = None,
    *,
    output_size: tuple[int, int] | None = None,
    chunk: int | None = None,
    min_score: float = 0.0,
) -> InstanceResult:
    """Official `instance_inference` on (Q, K+1) logits and (Q, H, W) mask logits at output size.

    Top-`instances_per_image` of softmax[:, :K] over all (query, class) pairs; label = index % K,
    query = index // K; mask = logit > 0; score = class score x mean sigmoid inside the mask.
    `thing_classes_only` (bool per class, panoptic models) drops stuff classes after the top-k.

    `mask_logits` may also be a function query indices -> their (n, H, W) logits at `output_size`: then
    only the queries of the kept results are made, `chunk` distinct queries at a time (the same result).
    `min_score` > 0 leaves out the results that cannot score that much (their class score is lower), so
    that a caller drawing only those needs no mask of the others; 0 keeps the official top-k.
    """
    num_queries, num_classes = class_logits.shape[0], class_logits.shape[-1] - 1
    k = min(instances_per_image, num_queries * num_classes)
    top_scores, labels, queries = (ops.convert_to_numpy(v) for v in top_k_pairs(class_logits, k))
    if thing_classes_only is not None:
        chosen = np.asarray(thing_classes_only)[labels]
        labels, queries, top_scores = labels[chosen], queries[chosen], top_scores[chosen]
    if min_score > 0:  # score = class score x mask quality (<= 1): these can never reach min_score
        chosen = top_scores >= min_score
        labels, queries, top_scores = labels[chosen], queries[chosen], top_scores[chosen]

    source = _mask_source(mask_logits)
    height, width = output_size or tuple(mask_logits.shape[-2:])
    distinct, row_of = np.unique(queries, return_inverse=True)  # a query may hold several of the top-k
    # (N, H, W) view of an (N, W, H) array: column-major per mask, as COCO RLE encoding reads it
    masks = np.empty((len(queries), width, height), bool).transpose(0, 2, 1)
    quality = np.zeros(len(distinct), np.float32)
    boxes = np.zeros((len(distinct), 4), np.float32)
    for start, stop in _chunks(len(distinct), chunk or max(1, len(distinct))):
        logits = source(distinct[start:stop])  # [n, H, W]
        quality[start:stop] = ops.convert_to_numpy(mask_quality(logits))
        boxes[start:stop] = ops.convert_to_numpy(mask_boxes(logits > 0))
        chunk_masks = ops.convert_to_numpy(ops.transpose(logits > 0, (0, 2, 1))).transpose(0, 2, 1)
        rows = np.nonzero((row_of >= start) & (row_of < stop))[0]
        masks[rows] = chunk_masks[row_of[rows] - start]
        del logits, chunk_masks
    scores = top_scores * quality[row_of]
    order = np.argsort(-scores, kind="stable")
    _reorder_rows(masks, order)  # masks[order] without a second (N, H, W) array
    return InstanceResult(
        masks=masks,
        scores=scores[order].astype(np.float32),
        labels=labels[order].astype(np.int64),
        queries=queries[order].astype(np.int64),
        boxes=boxes[row_of][order],
    )


# ------------------------------------------------------------------------------ whole batches
class PostProcessor:
    """Turns a batch of model outputs into per-image results of one task.

    Args:
        task: "instance", "panoptic" or "semantic".
        isthing: bool per contiguous class: stuff classes merge into one panoptic segment, and when
            there are stuff classes (a panoptic model) instance results keep thing classes only, as
            the official model does with panoptic inference on. Default: every class is a thing.
        object_mask_threshold, overlap_threshold: panoptic thresholds (official: 0.8, 0.8).
        instances_per_image: instance top-k (official: 100).
        chunk_pixels: full-resolution values made at a time (memory bound; the result does not depend on it).
        min_score: instance results that cannot reach this score are left out (test.py: its drawing
            threshold); 0 keeps the official top-k (evaluation).
    """

    def __init__(
        self,
        task: str,
        isthing=None,
        object_mask_threshold: float = 0.8,
        overlap_threshold: float = 0.8,
        instances_per_image: int = 100,
        chunk_pixels: int = CHUNK_PIXELS,
        min_score: float = 0.0,
    ):
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        self.task = task
        self.isthing = None if isthing is None else np.asarray(isthing, dtype=bool)
        self.object_mask_threshold = object_mask_threshold
        self.overlap_threshold = overlap_threshold
        self.instances_per_image = instances_per_image
        self.chunk_pixels = chunk_pixels
        self.min_score = min_score

    @classmethod
    def from_config(cls, config, isthing=None, task: str | None = None) -> PostProcessor:
        """From `config.inference` (task, thresholds, top-k); `isthing` from the dataset categories."""
        inference = config.inference
        return cls(
            task or inference.task,
            isthing=isthing,
            object_mask_threshold=inference.object_mask_threshold,
            overlap_threshold=inference.overlap_threshold,
            instances_per_image=inference.instances_per_image,
        )

    def __call__(self, outputs: dict, image_sizes, original_sizes) -> list:
        """outputs: `pred_logits` (B, Q, K+1), `pred_masks` (B, Q, Hp/4, Wp/4).

        image_sizes: per image (h, w) of the resized image inside the padded input (Hp, Wp);
        original_sizes: per image (H0, W0) to return results at.
        """
        class_logits, mask_logits = outputs["pred_logits"], outputs["pred_masks"]
        padded_size = (4 * mask_logits.shape[-2], 4 * mask_logits.shape[-1])
        return [
            self.one_image(class_logits[i], mask_logits[i], padded_size, image_sizes[i], original_sizes[i])
            for i in range(len(image_sizes))
        ]

    def one_image(self, class_logits, mask_logits, padded_size, image_size, original_size):
        """(Q, K+1), (Q, Hp/4, Wp/4) of one image -> its result at `original_size`.

        Only the masks a result keeps are brought to full resolution, a few at a time (about
        `chunk_pixels` values): a 12-megapixel photo needs no (Q, H0, W0) array."""
        num_classes = class_logits.shape[-1] - 1
        isthing = self.isthing if self.isthing is not None else np.ones(num_classes, dtype=bool)
        if len(isthing) != num_classes:
            raise ValueError(f"isthing has {len(isthing)} entries but the model predicts {num_classes} classes")
        image_size, original_size = tuple(map(int, image_size)), tuple(map(int, original_size))
        chunk = max(1, self.chunk_pixels // max(original_size[0] * original_size[1], padded_size[0] * padded_size[1]))
        if self.task == "semantic":
            padded = resize_bilinear(ops.cast(mask_logits, "float32"), padded_size)  # [Q, Hp, Wp]
            probs = semantic_inference(class_logits, padded)  # [K, Hp, Wp]
            best = np.full(original_size, -np.inf, np.float32)
            labels = np.zeros(original_size, np.int32)
            for start, stop in _chunks(num_classes, chunk):  # running argmax over classes (first wins on ties)
                part = crop_and_resize(probs[start:stop], image_size, original_size)
                part_best = ops.convert_to_numpy(ops.max(part, axis=0))
                better = part_best > best
                best[better] = part_best[better]
                labels[better] = ops.convert_to_numpy(ops.argmax(part, axis=0))[better] + start
            return SemanticResult(labels)

        def full_size(queries):  # [n, Hp/4, Wp/4] -> [n, H0, W0] logits of these queries
            logits = ops.cast(ops.take(mask_logits, queries, axis=0), "float32")
            return crop_and_resize(resize_bilinear(logits, padded_size), image_size, original_size)

        if self.task == "panoptic":
            return panoptic_inference(
                class_logits,
                full_size,
                isthing,
                self.object_mask_threshold,
                self.overlap_threshold,
                output_size=original_size,
                chunk=chunk,
            )
        things_only = isthing if not isthing.all() else None
        return instance_inference(
            class_logits,
            full_size,
            self.instances_per_image,
            things_only,
            output_size=original_size,
            chunk=chunk,
            min_score=self.min_score,
        )
