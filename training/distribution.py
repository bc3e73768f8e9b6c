"""Distribution strategy from the config or the environment, and the per-replica training input.

`train.distribution`:
  - "default": one device (the default strategy);
  - "mirrored": all local GPUs (`MirroredStrategy`; on a machine without GPUs, its logical CPU devices);
  - "multi_worker": `MultiWorkerMirroredStrategy`, the cluster read from the `TF_CONFIG` environment variable;
  - "tpu": `TPUStrategy` on `train.tpu_address` (empty: the local TPU / `TPU_NAME`);
  - "auto": "tpu" if `TPU_NAME` is set, else "multi_worker" if `TF_CONFIG` is, else "mirrored" with more
    than one GPU, else "default".
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

from data.pipeline import build_dataset


def resolve_distribution(kind: str) -> str:
    """ "auto" -> the concrete kind for this environment; others are returned unchanged."""
    if kind != "auto":
        return kind
    if os.environ.get("TPU_NAME"):
        return "tpu"
    if os.environ.get("TF_CONFIG"):
        return "multi_worker"
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return "mirrored"
    return "default"


def select_strategy(train_config) -> tf.distribute.Strategy:
    """The `tf.distribute.Strategy` of `train_config.distribution` (see the module docstring)."""
    kind = resolve_distribution(train_config.distribution)
    if kind == "default":
        return tf.distribute.get_strategy()
    if kind == "mirrored":
        devices = (
            None if tf.config.list_logical_devices("GPU") else [d.name for d in tf.config.list_logical_devices("CPU")]
        )
        return tf.distribute.MirroredStrategy(devices=devices)
    if kind == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise ValueError(
                "train.distribution='multi_worker' needs the cluster in the TF_CONFIG environment variable, e.g. "
                '{"cluster": {"worker": ["host1:2222", "host2:2222"]}, "task": {"type": "worker", "index": 0}}'
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=train_config.tpu_address or None)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"train.distribution={kind!r} is not one of auto, default, mirrored, multi_worker, tpu")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the worker that writes checkpoints and logs (the only one, without multi-worker)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type is None:
        return True
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    return task_type == "chief" or (task_type == "worker" and task_id == 0 and "chief" not in cluster)


def replica_batch_size(config, strategy: tf.distribute.Strategy) -> int:
    """Images per replica per optimizer step; raises if the global batch does not split evenly."""
    t, replicas = config.train, strategy.num_replicas_in_sync
    if t.batch_size % (replicas * t.accumulation_steps):
        raise ValueError(
            f"train.batch_size={t.batch_size} must be divisible by {replicas} replicas x "
            f"train.accumulation_steps={t.accumulation_steps}; change one of them"
        )
    return t.batch_size // replicas


def distributed_train_dataset(config, strategy: tf.distribute.Strategy, start_step: int = 0):
    """Per-replica training batches of `replica_batch_size` images (all micro-batches of one step).

    Every input pipeline reads its own share of the files; `start_step` optimizer steps of input are
    skipped before decoding, so a resumed run continues at the same data position (the pipeline is
    deterministic given `data.seed`). Target slots are bucketed per batch (see `build_dataset`) on one
    machine; across workers and on TPU they stay data.max_instances, so that every worker runs the
    same traced step (its collectives must match).
    """
    bucket = not isinstance(strategy, (tf.distribute.MultiWorkerMirroredStrategy, tf.distribute.TPUStrategy))

    def dataset_fn(context: tf.distribute.InputContext):
        per_replica = context.get_per_replica_batch_size(config.train.batch_size)
        examples_per_step = config.train.batch_size // context.num_input_pipelines
        return build_dataset(
            config,
            "train",
            batch_size=per_replica,
            input_context=context,
            skip_examples=start_step * examples_per_step,
            bucket_instances=bucket,
        )

    return strategy.distribute_datasets_from_function(dataset_fn)
