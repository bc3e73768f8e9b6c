"""`build_dataset(config, split)`: TFRecord shards -> decoded, augmented, optionally batched examples.

    from data.pipeline import build_dataset
    train = build_dataset(config, "train", batch_size=16)  # dicts of (16, ...) tensors, repeats forever
    val = build_dataset(config, "val")                     # one image at a time, one pass

Per-replica batching under tf.distribute (each replica reads its own files):

    strategy.distribute_datasets_from_function(
        lambda ctx: build_dataset(config, "train", batch_size=ctx.get_per_replica_batch_size(16), input_context=ctx))

Training elements follow the contract of data/parser.py (`image`, `masks`, `labels`, `valid`,
`num_targets`), with M = data.max_instances target slots, or with `bucket_instances` (what training
uses on one machine) M = the batch's bucket: the smallest of 1, 2, 4, ..., data.max_instances that
holds its targets;
evaluation elements are `image`, `valid_size`, `original_size`, `source_id`. The target source follows
`config.inference.task`: instance -> the records' objects, panoptic -> their panoptic segments,
semantic -> their label PNG. With `config.data.seed` set the output is the same on every run.
"""

from __future__ import annotations

import os
import random

import tensorflow as tf

from config import Mask2FormerConfig
from data import tfrecord_format as fmt
from data.categories import Categories
from data.decoder import Decoder
from data.parser import EvalParser, TrainParser

TASK_SOURCES = {"instance": "objects", "panoptic": "panoptic", "semantic": "semantic"}


def load_categories(config: Mask2FormerConfig, file_pattern: str) -> Categories:
    """`config.data.categories_file`, else the categories.json beside the shards; checks num_classes."""
    path = config.data.categories_file or os.path.join(os.path.dirname(file_pattern), "categories.json")
    categories = Categories.load(path)
    if categories.num_classes != config.model.num_classes:
        raise ValueError(
            f"{path} lists {categories.num_classes} categories but model.num_classes is "
            f"{config.model.num_classes}; set model.num_classes={categories.num_classes} or point "
            "data.categories_file at the right list"
        )
    return categories


def instance_buckets(max_instances: int) -> list[int]:
    """The target slot counts a bucketed training batch can have: 1, 2, 4, ... below max_instances, and it."""
    return sorted({min(2**i, max_instances) for i in range(max_instances.bit_length() + 1)})


def instance_bucket(count: int, max_instances: int) -> int:
    """Target slots for a batch whose largest image has `count` instances: the smallest bucket >= count."""
    return next(b for b in instance_buckets(max_instances) if b >= min(count, max_instances))


def pad_to_bucket(batch: dict[str, tf.Tensor], max_instances: int) -> dict[str, tf.Tensor]:
    """Pads the target slots of a padded batch (masks (B, n, H, W), labels, valid, boxes) to its bucket.

    No batch carries `max_instances` full-size masks, and few buckets mean few traces of the training step
    where its shapes must be static (XLA, TPU; otherwise one trace serves every bucket).
    """
    buckets = tf.constant(instance_buckets(max_instances))
    slots = tf.reduce_min(tf.boolean_mask(buckets, buckets >= tf.shape(batch["valid"])[1]))
    padding = slots - tf.shape(batch["valid"])[1]
    out = dict(batch)
    for key in ("masks", "labels", "valid", "boxes"):
        if key in batch:
            rank = batch[key].shape.rank
            out[key] = tf.pad(batch[key], [[0, 0], [0, padding]] + [[0, 0]] * (rank - 2))
    return out


def has_targets(serialized: tf.Tensor, source: str) -> tf.Tensor:
    """True when the record has at least one non-crowd object / segment (official empty-image filter)."""
    key = {"objects": fmt.OBJECT_IS_CROWD, "panoptic": fmt.SEGMENT_IS_CROWD}[source]
    is_crowd = tf.io.parse_single_example(serialized, {key: tf.io.VarLenFeature(tf.int64)})[key].values
    return tf.reduce_any(is_crowd == 0)


def build_dataset(
    config: Mask2FormerConfig,
    split: str,
    *,
    batch_size: int | None = None,
    input_context: tf.distribute.InputContext | None = None,
    with_extras: bool = False,
    file_pattern: str | None = None,
    skip_examples: int = 0,
    bucket_instances: bool = False,
) -> tf.data.Dataset:
    """The input pipeline for `split` ("train" or "val").

    batch_size: None gives one example per element; an int stacks that many (training drops the last
        partial batch; evaluation with batch_size > 1 pads every image to a fixed square of side
        max_size_test rounded up to 32, so that they stack).
    input_context: from `distribute_datasets_from_function`; shards the files per input pipeline.
    with_extras: adds inspection keys (see TrainParser); for test_dataset.py and tests.
    file_pattern: overrides data.train_files / data.val_files.
    skip_examples: training only; leaves out the first that many examples of this pipeline before they
        are decoded (resuming a run at its data position; each keeps its augmentation seed).
    bucket_instances: training batches only; the target slots M of each batch are the smallest of
        1, 2, 4, ..., data.max_instances that holds its largest image's targets (`pad_to_bucket`),
        instead of always data.max_instances. One trace of the training step serves them all (under XLA,
        one trace per bucket in use).
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    data = config.data
    training = split == "train"
    file_pattern = file_pattern or (data.train_files if training else data.val_files)
    files = sorted(tf.io.gfile.glob(file_pattern))
    if not files:
        raise FileNotFoundError(
            f"no TFRecord files match {file_pattern}; write them with convert_coco_to_tfrecord.py "
            f"or set data.{split}_files"
        )
    source = TASK_SOURCES[config.inference.task]
    decoder = Decoder(load_categories(config, file_pattern), source=source)
    deterministic = data.seed is not None
    seed = data.seed if deterministic else random.SystemRandom().randrange(2**31)

    dataset = tf.data.Dataset.from_tensor_slices(files)
    if input_context is not None and input_context.num_input_pipelines > 1:
        dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if training:
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.interleave(
        lambda path: tf.data.TFRecordDataset(path, buffer_size=8 << 20),
        cycle_length=min(len(files), 16),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic or not training,
    )
    if data.cache:
        dataset = dataset.cache()

    if training:
        if source != "semantic":
            dataset = dataset.filter(lambda serialized: has_targets(serialized, source))
        dataset = dataset.shuffle(data.shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
        parser = TrainParser(
            image_size=data.image_size,
            max_instances=data.max_instances,
            augmentation=data.augmentation,
            scale_range=data.scale_range,
            horizontal_flip=data.horizontal_flip,
            image_pad_value=data.image_pad_value,
            with_extras=with_extras,
            fixed_slots=not (bucket_instances and batch_size),
        )
        # Sample i gets the seed (seed, i): the same augmentation whichever thread parses it.
        dataset = (
            dataset.enumerate()
            .skip(skip_examples)
            .map(
                lambda index, serialized: parser(decoder(serialized), tf.stack([tf.cast(seed, tf.int64), index])),
                num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=deterministic,
            )
        )
    else:
        fixed = None
        if batch_size and batch_size > 1:
            side = -(-data.max_size_test // config.model.size_divisibility) * config.model.size_divisibility
            fixed = (side, side)
        parser = EvalParser(
            min_size=data.min_size_test,
            max_size=data.max_size_test,
            pixel_mean=config.model.pixel_mean,
            size_divisibility=config.model.size_divisibility,
            fixed_size=fixed,
        )
        dataset = dataset.map(lambda s: parser(decoder(s)), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    if batch_size and training and bucket_instances:
        dataset = dataset.padded_batch(batch_size, drop_remainder=True)
        dataset = dataset.map(lambda batch: pad_to_bucket(batch, data.max_instances))
    elif batch_size:
        dataset = dataset.batch(batch_size, drop_remainder=training)
    options = tf.data.Options()
    options.deterministic = deterministic or not training
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)
