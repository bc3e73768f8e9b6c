"""Evaluating a model on a validation set: COCO JSON (+ image folder) or TFRecords, one task at a time.

    eval_set = tfrecord_eval_set(config, "datasets/coco/tfrecords/val-*.tfrecord", "instance")
    # or coco_json_eval_set(config, "instances_val2017.json", "coco/val2017", "instance")
    metrics = evaluate_model(model, eval_set, config, "instance", progress=True)

Every `Sample` is one image's model input, resized exactly as detectron2's test-time resize (PIL
bilinear; `inference.predictor.resize_for_test` for image files, `data.parser.EvalParser` for
records, pixel for pixel the same: `data.resize`), the resized size inside it, the original size and its ground
truth. Predictions go through the official post-processing (`PostProcessor`) at the original size
and into the task's evaluator; the metrics have the formats of evaluating prediction files:

- instance: COCO mask and box AP (pycocotools) -> {"segm": {"AP", ...12 stats}, "bbox": {...}};
- panoptic: PQ with panopticapi's rules -> {"All", "Things", "Stuff", "per_class"};
- semantic: mIoU, fwIoU, mACC, pACC -> {"mIoU", ..., "per_class"}.

Ground truth from records: instance objects (masks, classes, crowd flags, boxes, areas) become an
in-memory COCO dataset; the panoptic keys give the panoptic PNG's equivalent (segment map + segment
list with category, crowd flag and area); semantic labels come from the label PNG, or from the
panoptic segments (every segment's category, void = ignore, as detectron2's panoptic-to-semantic
conversion does) when the records have no label PNG.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from data.categories import Categories
from evaluation.coco import encode_masks, evaluate_coco_results, instances_to_coco_results, load_coco, xyxy_to_xywh
from evaluation.panoptic_quality import PanopticEvaluator, read_panoptic_png
from evaluation.semantic import SemanticEvaluator
from inference.postprocess import PostProcessor
from inference.predictor import compiled, pad_batch, padded_shape, read_image, resize_for_test
from jsonfile import read_json

IGNORE_LABEL = 255  # semantic ground truth that is not evaluated


@dataclass
class Sample:
    """One image: model input and ground truth."""

    image: np.ndarray  # float32 (h, w, 3) RGB 0..255, resized; may be padded bottom/right with the pixel mean
    valid_size: tuple[int, int]  # the resized image inside `image`
    original_size: tuple[int, int]  # results are returned at this size
    image_id: int
    ground_truth: dict = field(default_factory=dict)  # per task, see the evaluators


@dataclass
class EvalSet:
    """Samples of a validation set, its categories, and (instance task, COCO JSON) the ground-truth file."""

    samples: Iterable[Sample]
    categories: Categories
    num_images: int
    coco_gt: object = None  # pycocotools COCO when the instance ground truth is a file


# ------------------------------------------------------------------------------- evaluators
class InstanceTaskEvaluator:
    """COCO mask and box AP; ground truth from a COCO file, or from the samples' `annotations`."""

    def __init__(self, categories: Categories, coco_gt=None):
        self.category_ids = categories.ids
        self.categories = [{"id": i, "name": n} for i, n in zip(categories.ids, categories.names, strict=True)]
        self.coco_gt = coco_gt
        self.results, self.images, self.annotations = [], [], []

    def update_state(self, sample: Sample, result) -> None:
        self.results.extend(instances_to_coco_results(sample.image_id, result, self.category_ids))
        if self.coco_gt is None:
            height, width = sample.original_size
            self.images.append({"id": sample.image_id, "height": height, "width": width})
            for annotation in sample.ground_truth["annotations"]:
                self.annotations.append({**annotation, "id": len(self.annotations) + 1})

    def result(self) -> dict:
        coco_gt = self.coco_gt
        if coco_gt is None:
            from pycocotools.coco import COCO

            with contextlib.redirect_stdout(io.StringIO()):
                coco_gt = COCO()
                coco_gt.dataset = {
                    "images": self.images,
                    "annotations": self.annotations,
                    "categories": self.categories,
                }
                coco_gt.createIndex()
        return evaluate_coco_results(coco_gt, self.results)


class PanopticTaskEvaluator:
    """PQ; ground truth `segment_ids` (H, W) and `segments` (COCO panoptic segments_info with dataset ids)."""

    def __init__(self, categories: Categories):
        self.category_ids = categories.ids
        self.evaluator = PanopticEvaluator(categories.to_json()["categories"])

    def update_state(self, sample: Sample, result) -> None:
        predicted = [{"id": s["id"], "category_id": self.category_ids[s["category"]]} for s in result.segments]
        truth = sample.ground_truth
        self.evaluator.update_state(
            truth["segment_ids"], truth["segments"], result.segment_ids, predicted, sample.image_id
        )

    def result(self) -> dict:
        return self.evaluator.result()


class SemanticTaskEvaluator:
    """mIoU and accuracies; ground truth `labels` (H, W) contiguous classes, IGNORE_LABEL = not evaluated."""

    def __init__(self, categories: Categories):
        self.evaluator = SemanticEvaluator(categories.num_classes, IGNORE_LABEL, categories.names)

    def update_state(self, sample: Sample, result) -> None:
        self.evaluator.update_state(sample.ground_truth["labels"], result.labels)

    def result(self) -> dict:
        return self.evaluator.result()


def task_evaluator(task: str, eval_set: EvalSet):
    if task == "instance":
        return InstanceTaskEvaluator(eval_set.categories, eval_set.coco_gt)
    if task == "panoptic":
        return PanopticTaskEvaluator(eval_set.categories)
    return SemanticTaskEvaluator(eval_set.categories)


# ---------------------------------------------------------------------------------- the loop
def evaluate_model(
    model: Callable,
    eval_set: EvalSet,
    config,
    task: str,
    batch_size: int = 1,
    progress: bool = False,
) -> dict:
    """Runs `model` (the model contract; a Keras model runs through `CompiledModel`) over `eval_set` in
    batches of one padded shape and returns the task's metrics."""
    postprocess = PostProcessor.from_config(config, isthing=eval_set.categories.isthing, task=task)
    evaluator = task_evaluator(task, eval_set)
    bar = None
    if progress and sys.stdout.isatty():  # a bar on a terminal; a log gets only the metrics
        import keras

        bar = keras.utils.Progbar(eval_set.num_images, unit_name="image")
    model = compiled(model, config)
    done = 0

    def run(batch: list[Sample]) -> None:
        nonlocal done
        outputs = model(pad_batch([s.image for s in batch], config.model.pixel_mean), training=False)
        results = postprocess(outputs, [s.valid_size for s in batch], [s.original_size for s in batch])
        for sample, result in zip(batch, results, strict=True):
            evaluator.update_state(sample, result)
        done += len(batch)
        if bar is not None:
            bar.update(done)

    # Batches hold images of one padded shape (each image gets its result alone); at most
    # 4 x batch_size images wait for their batch to fill.
    pending: dict[tuple[int, int], list[Sample]] = {}
    for sample in eval_set.samples:
        key = padded_shape(*sample.image.shape[:2], config.model.size_divisibility)
        pending.setdefault(key, []).append(sample)
        if len(pending[key]) == batch_size:
            run(pending.pop(key))
        elif sum(len(waiting) for waiting in pending.values()) >= 4 * batch_size:
            run(pending.pop(max(pending, key=lambda k: len(pending[k]))))
    for waiting in pending.values():
        run(waiting)
    if done == 0:
        raise ValueError("the validation set holds no images; nothing to evaluate")
    return evaluator.result()


# ------------------------------------------------------------------------------ COCO JSON sets
def coco_json_eval_set(config, gt_file: str, images_dir: str, task: str, gt_dir: str | None = None) -> EvalSet:
    """COCO instances JSON (instance task) or COCO panoptic JSON + PNG folder (panoptic, semantic) + images."""
    gt = read_json(gt_file, "ground-truth")
    if not isinstance(gt, dict) or not isinstance(gt.get("images"), list) or "categories" not in gt:
        raise ValueError(f"{gt_file} is not a COCO JSON (it needs 'images', 'annotations' and 'categories')")
    if not os.path.isdir(images_dir):
        raise FileNotFoundError(f"image folder {images_dir} does not exist; pass the images of {gt_file} with --images")
    annotations = gt.get("annotations", [])
    panoptic = bool(annotations) and all("segments_info" in a for a in annotations)
    categories = Categories.from_coco(gt["categories"])
    _check_class_count(categories, config, gt_file)
    min_size, max_size = config.data.min_size_test, config.data.max_size_test
    images = sorted(gt["images"], key=lambda info: int(info["id"]))

    def model_input(info) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        path = os.path.join(images_dir, info["file_name"])
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image {path} (listed in {gt_file}) does not exist; check --images")
        image = read_image(path)
        expected = (int(info.get("height", image.shape[0])), int(info.get("width", image.shape[1])))
        if image.shape[:2] != expected:
            raise ValueError(
                f"image {path} is {image.shape[0]}x{image.shape[1]} (after EXIF rotation) but {gt_file} "
                f"says {expected[0]}x{expected[1]}; fix the file or the annotation"
            )
        resized = resize_for_test(image, min_size, max_size)
        return resized.astype(np.float32), resized.shape[:2], image.shape[:2]

    if task == "instance":
        if panoptic:
            raise ValueError(f"{gt_file} is a panoptic JSON; instance AP needs the COCO instances JSON as --gt")
        coco_gt = load_coco(gt_file)

        def instance_samples():
            for info in images:
                image, valid, original = model_input(info)
                yield Sample(image, valid, original, int(info["id"]))

        return EvalSet(instance_samples(), categories, len(images), coco_gt)

    if not panoptic:
        raise ValueError(f"{gt_file} is not a COCO panoptic JSON; {task} evaluation needs one (with --gt-dir)")
    gt_dir = gt_dir or (gt_file[: -len(".json")] if gt_file.endswith(".json") else None)
    if not gt_dir or not os.path.isdir(gt_dir):
        raise FileNotFoundError(f"panoptic PNG folder {gt_dir} does not exist; pass it with --gt-dir")
    by_image = {int(a["image_id"]): a for a in annotations}
    images = [info for info in images if int(info["id"]) in by_image]

    def panoptic_samples():
        for info in images:
            image, valid, original = model_input(info)
            annotation = by_image[int(info["id"])]
            segment_ids = read_panoptic_png(os.path.join(gt_dir, annotation["file_name"]))
            segments = annotation["segments_info"]
            if task == "panoptic":
                truth = {"segment_ids": segment_ids, "segments": segments}
            else:
                truth = {"labels": semantic_from_segments(segment_ids, segments, categories)}
            yield Sample(image, valid, original, int(info["id"]), truth)

    return EvalSet(panoptic_samples(), categories, len(images))


def semantic_from_segments(segment_ids: np.ndarray, segments: list[dict], categories: Categories) -> np.ndarray:
    """(H, W) panoptic ids + segments_info -> (H, W) contiguous class per pixel; void and unknown ids -> ignore."""
    labels = np.full(segment_ids.shape, IGNORE_LABEL, np.int32)
    known = set(categories.ids)
    for segment in segments:
        if int(segment["category_id"]) in known:
            labels[segment_ids == int(segment["id"])] = categories.index_of(segment["category_id"])
    return labels


def _check_class_count(categories: Categories, config, source: str) -> None:
    if categories.num_classes != config.model.num_classes:
        raise ValueError(
            f"{source} lists {categories.num_classes} categories but the model predicts {config.model.num_classes} "
            "classes; evaluate on the dataset the model was trained for"
        )


# ----------------------------------------------------------------------------- TFRecord sets
def tfrecord_eval_set(config, file_pattern: str, task: str) -> EvalSet:
    """Records written by convert_coco_to_tfrecord.py (categories.json beside them, or data.categories_file)."""
    import tensorflow as tf

    from data import tfrecord_format as fmt
    from data.decoder import Decoder
    from data.parser import EvalParser
    from data.pipeline import load_categories

    files = sorted(tf.io.gfile.glob(file_pattern))
    if not files:
        raise FileNotFoundError(f"no TFRecord files match {file_pattern}; write them with convert_coco_to_tfrecord.py")
    categories = load_categories(config, file_pattern)
    source = record_source(files, task)
    decoder = Decoder(categories, source)
    parser = EvalParser(
        min_size=config.data.min_size_test,
        max_size=config.data.max_size_test,
        pixel_mean=config.model.pixel_mean,
        size_divisibility=config.model.size_divisibility,
    )
    area_key = {"objects": fmt.OBJECT_AREA, "panoptic": fmt.SEGMENT_AREA}.get(source)

    def parse(serialized):
        example = decoder(serialized)
        inputs = parser(example)
        truth = {k: v for k, v in example.items() if k not in ("image", "source_id")}
        if area_key:
            parsed = tf.io.parse_single_example(serialized, {area_key: tf.io.VarLenFeature(tf.float32)})
            truth["area"] = tf.sparse.to_dense(parsed[area_key])
        return inputs, truth

    dataset = tf.data.TFRecordDataset(files).map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    num_images = sum(1 for _ in tf.data.TFRecordDataset(files))

    def samples():
        for index, (inputs, truth) in enumerate(dataset.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()):
            source_id = inputs["source_id"].decode()
            image_id = int(source_id) if source_id.isdigit() else index
            yield Sample(
                inputs["image"],
                tuple(int(v) for v in inputs["valid_size"]),
                tuple(int(v) for v in inputs["original_size"]),
                image_id,
                record_ground_truth(truth, source, task, image_id, categories),
            )

    return EvalSet(samples(), categories, num_images)


def record_source(files: list[str], task: str) -> str:
    """The decoder source that holds `task`'s ground truth, from the keys of the first record."""
    import tensorflow as tf

    from data import tfrecord_format as fmt

    first = next(iter(tf.data.TFRecordDataset(files).take(1)), None)
    if first is None:
        raise ValueError(f"{files[0]} and the other shards hold no records; nothing to evaluate")
    keys = set(tf.train.Example.FromString(first.numpy()).features.feature)
    if task == "instance":
        if fmt.OBJECT_MASK in keys:
            return "objects"
        raise ValueError(
            f"the records ({files[0]}) hold no instance masks; convert with --object_annotations_file "
            "and --include_masks"
        )
    if task == "panoptic" or fmt.SEMANTIC_ENCODED not in keys:
        if fmt.PANOPTIC_INSTANCE_MASK in keys:
            return "panoptic"
        raise ValueError(
            f"the records ({files[0]}) hold no panoptic masks; convert with --panoptic_annotations_file, "
            "--panoptic_masks_dir and --include_panoptic_masks"
        )
    return "semantic"


def record_ground_truth(truth: dict, source: str, task: str, image_id: int, categories: Categories) -> dict:
    """Decoded record tensors (NumPy) -> the ground truth `task`'s evaluator reads."""
    classes = truth["classes"]
    if task == "instance":
        masks, crowd, area = truth["masks"], truth["is_crowd"], truth["area"]
        boxes = xyxy_to_xywh(truth["boxes"][:, [1, 0, 3, 2]])  # [ymin, xmin, ymax, xmax] -> [x, y, w, h]
        annotations = []
        for k, rle in enumerate(encode_masks(masks)):
            if classes[k] < 0:
                continue
            annotations.append(
                {
                    "image_id": image_id,
                    "category_id": categories.ids[classes[k]],
                    "segmentation": rle,
                    "area": float(area[k]) if area[k] > 0 else float(masks[k].sum()),
                    "bbox": [float(v) for v in boxes[k]],
                    "iscrowd": int(crowd[k]),
                }
            )
        return {"annotations": annotations}
    if source == "semantic":
        label_map = truth["label_map"]  # class c holds c + 1, 0 = ignore
        return {"labels": np.where(label_map > 0, label_map - 1, IGNORE_LABEL).astype(np.int32)}
    segment_map = truth["segment_map"]  # segment n holds n + 1, 0 = void
    if task == "semantic":
        lookup = np.concatenate([[IGNORE_LABEL], np.where(classes >= 0, classes, IGNORE_LABEL)]).astype(np.int32)
        return {"labels": lookup[segment_map]}
    segments = [
        {
            "id": n + 1,
            "category_id": categories.ids[classes[n]],
            "iscrowd": int(truth["is_crowd"][n]),
            "area": int(round(float(truth["area"][n]))),
        }
        for n in range(len(classes))
        if classes[n] >= 0
    ]
    return {"segment_ids": segment_map, "segments": segments}
