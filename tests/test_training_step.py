"""The train step: accumulation is exact, the step is traced once, non-finite losses skip the update."""

import json
import logging

import numpy as np
import pytest
import tensorflow as tf

from data.pipeline import build_dataset
from losses import build_criterion
from model import build_model
from tests.helpers import tiny_config
from tests.synthetic_coco import training_config, write_synthetic_tfrecords
from training.loop import train
from training.optimizer import build_optimizer
from training.schedules import build_schedule
from training.train_step import TrainStep


def _config():
    config = tiny_config(num_decoder_layers=1, encoder_layers=1)
    config.data.max_instances = 4
    config.loss.num_points = 64
    config.train.mixed_precision = "float32"
    return config


def _batch(batch_size=4, size=64, seed=0):
    rng = np.random.default_rng(seed)
    valid = np.zeros((batch_size, 4), bool)
    for i, count in enumerate([2, 1, 4, 0, 3, 1][:batch_size]):  # includes an image without targets
        valid[i, :count] = True
    masks = np.zeros((batch_size, 4, size, size), np.uint8)
    for i, j in zip(*np.nonzero(valid), strict=True):
        y, x = rng.integers(0, size - 16, 2)
        masks[i, j, y : y + int(rng.integers(8, 16)), x : x + int(rng.integers(8, 16))] = 1
    return {
        "image": tf.constant(rng.uniform(0, 255, (batch_size, size, size, 3)), tf.float32),
        "masks": tf.constant(masks),
        "labels": tf.constant(rng.integers(0, 5, (batch_size, 4)), tf.int32),
        "valid": tf.constant(valid),
    }


def _step_fn(config, model, accumulation_steps, batch_size=4):
    step = tf.Variable(0, dtype=tf.int64)
    schedule = build_schedule(config.train)
    optimizer = build_optimizer(config.train, model, learning_rate=lambda: schedule(step))
    return TrainStep(
        model,
        build_criterion(config),
        optimizer,
        tf.distribute.get_strategy(),
        step,
        accumulation_steps=accumulation_steps,
        replica_batch_size=batch_size,
        seed=5,
        learning_rate=schedule,
    )


def _relative_error(a, b):
    num = np.sqrt(sum(np.sum((x.numpy() - y.numpy()) ** 2) for x, y in zip(a, b, strict=True)))
    return num / np.sqrt(sum(np.sum(x.numpy() ** 2) for x in a))


def test_accumulated_gradients_equal_the_whole_batch():
    config = _config()
    model = build_model(config)
    batch = _batch()
    full_step = _step_fn(config, model, 1)
    grads_1, losses_1 = tf.function(full_step.gradients)(batch)

    # The whole-batch loss is the official one: default normalisers of the criterion on the batch.
    points = full_step._points(tf.constant(0, tf.int64), tf.constant(0, tf.int64))
    official = build_criterion(config)(model(batch["image"], training=True), batch, points=points)
    for name in full_step.loss_names:
        np.testing.assert_allclose(float(losses_1[name]), float(official[name]), rtol=1e-6, err_msg=name)

    for k in (2, 4):
        grads_k, losses_k = tf.function(_step_fn(config, model, k).gradients)(batch)
        print(f"accumulation k={k}: gradient relative error {_relative_error(grads_1, grads_k):.1e}")
        assert _relative_error(grads_1, grads_k) < 1e-5
        for name in full_step.loss_names:
            np.testing.assert_allclose(float(losses_k[name]), float(losses_1[name]), rtol=1e-5, err_msg=name)
    # Every parameter receives a gradient, except the pixel decoder's level_embed at initialisation: it only
    # feeds the deformable attention's sampling_offsets / attention_weights, whose kernels start at zero
    # (as the official init), so its gradient is exactly zero until they move.
    zero = [v for v, g in zip(model.trainable_variables, grads_1, strict=True) if not np.any(g.numpy())]
    assert zero == [model.pixel_decoder.level_embed]
    attention = model.pixel_decoder.encoder[0].self_attn
    assert not np.any(attention.sampling_offsets.kernel.numpy()) and not np.any(
        attention.attention_weights.kernel.numpy()
    )


@pytest.mark.slow  # its fast twin: test_accumulated_gradients_equal_the_whole_batch (k = 1, 2, 4)
def test_accumulated_update_equals_the_whole_batch_update():
    config = _config()
    batch = _batch()
    initial = build_model(config).get_weights()
    deltas = []
    for k in (1, 2):
        model = build_model(config)
        model.set_weights(initial)
        before = [v.numpy() for v in model.trainable_variables]
        results = _step_fn(config, model, k)(batch)
        assert float(results["applied"]) == 1.0
        deltas.append([tf.constant(v.numpy() - b) for v, b in zip(model.trainable_variables, before, strict=True)])
    # Adam's first step is lr * g / (|g| + eps) after clipping: gradients that are zero in exact arithmetic
    # (e.g. attention key biases, shift-invariant under softmax) are float noise there, so compare the
    # update as a whole.
    assert _relative_error(deltas[0], deltas[1]) < 1e-4


@pytest.mark.slow
def test_step_is_traced_once_over_50_steps_with_accumulation(caplog):
    config = _config()
    model = build_model(config)
    step_fn = _step_fn(config, model, 2, batch_size=2)
    with caplog.at_level(logging.WARNING):
        for i in range(50):
            results = step_fn(_batch(2, seed=i))
    assert step_fn.tracing_count == 1
    assert int(step_fn.step.numpy()) == 50 and np.isfinite(float(results["loss_total"]))
    assert not [r for r in caplog.records if "retracing" in r.getMessage()]


def test_data_crosses_epoch_boundaries_and_skips_to_a_position(tmp_path):
    pattern = write_synthetic_tfrecords(tmp_path, num_images=3)
    config = training_config(pattern, str(tmp_path / "run"))
    ids = lambda dataset, n: [  # noqa: E731
        b["source_id"].numpy().tolist() for b in dataset.take(n)
    ]
    batches = ids(build_dataset(config, "train", batch_size=2, with_extras=True), 3)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == sorted([b"1", b"2", b"3"] * 2)  # 3 steps of 2 = two full epochs, nothing dropped
    resumed = ids(build_dataset(config, "train", batch_size=2, with_extras=True, skip_examples=2), 2)
    assert resumed == batches[1:]
    first = next(iter(build_dataset(config, "train", batch_size=2, with_extras=True).skip(1)))
    again = next(iter(build_dataset(config, "train", batch_size=2, with_extras=True, skip_examples=2)))
    np.testing.assert_array_equal(first["image"].numpy(), again["image"].numpy())  # same augmentation


class _PoisonedCriterion:
    """The real criterion, with a NaN total loss from call `poison_from` on (counted in the graph)."""

    def __init__(self, criterion, poison_from):
        self.criterion = criterion
        self.calls = tf.Variable(0, dtype=tf.int64)
        self.poison_from = poison_from

    def __getattr__(self, name):
        return getattr(self.criterion, name)

    def __call__(self, outputs, targets, **kwargs):
        losses = dict(self.criterion(outputs, targets, **kwargs))
        calls = self.calls.assign_add(1)
        poison = tf.where(calls >= self.poison_from, float("nan"), 0.0)
        losses["loss_total"] = losses["loss_total"] + poison
        return losses


def test_nonfinite_losses_skip_the_update_and_stop_the_run_keeping_the_last_good_checkpoint(tmp_path):
    pattern = write_synthetic_tfrecords(tmp_path, num_images=2)
    config = training_config(pattern, str(tmp_path / "run"), max_steps=8, checkpoint_every=1, max_nonfinite_steps=2)
    config.model.num_decoder_layers = 1
    criterion = _PoisonedCriterion(build_criterion(config), poison_from=3)
    result = train(config, criterion=criterion)
    assert result.status == "stopped_nonfinite" and result.step == 4
    assert [h["applied"] for h in result.history] == [1.0, 1.0, 0.0, 0.0]
    assert result.last_checkpoint.endswith("ckpt-2")
    reader = tf.train.load_checkpoint(result.last_checkpoint)
    saved = {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map() if name.startswith("model/")}
    kernel = [n for n in saved if "class_embed" in n and "kernel" in n and "OPTIMIZER" not in n]
    assert len(kernel) == 1
    current = next(v for v in result.model.trainable_variables if v.path.endswith("class_embed/kernel"))
    np.testing.assert_array_equal(saved[kernel[0]], current.numpy())  # the skipped steps changed nothing


@pytest.mark.parametrize("policy", ["mixed_float16", pytest.param("mixed_bfloat16", marks=pytest.mark.slow)])
def test_mixed_precision_step_scales_the_loss_and_keeps_losses_in_float32(policy):
    import keras

    config = _config()
    config.train.mixed_precision = policy
    model = build_model(config, dtype=keras.DTypePolicy(policy))
    step_fn = _step_fn(config, model, 2)
    assert isinstance(step_fn.optimizer, keras.optimizers.LossScaleOptimizer) == (policy == "mixed_float16")
    before = [v.numpy() for v in model.trainable_variables]
    results = step_fn(_batch())
    assert all(v.dtype == tf.float32 for v in results.values())
    assert float(results["applied"]) == 1.0 and np.isfinite(float(results["loss_total"]))
    assert float(results["loss_scale"]) == (2.0**15 if policy == "mixed_float16" else 1.0)
    assert all(v.dtype == "float32" for v in model.trainable_variables)
    changed = [not np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_variables, strict=True)]
    assert sum(changed) > 0.9 * len(changed)


@pytest.mark.slow
def test_xla_step_with_the_device_matcher():
    config = _config()
    config.loss.matcher = "device"
    config.train.jit_compile = True
    with pytest.raises(ValueError, match="dynamic_pairs=False"):
        _xla_step(config, build_criterion(config))
    step_fn = _xla_step(config, build_criterion(config, dynamic_pairs=False))
    for i in range(3):
        results = step_fn(_batch(seed=i))
    assert float(results["applied"]) == 1.0 and np.isfinite(float(results["loss_total"]))
    assert step_fn.tracing_count == 1


def _xla_step(config, criterion):
    model = build_model(config)
    step = tf.Variable(0, dtype=tf.int64)
    schedule = build_schedule(config.train)
    return TrainStep(
        model,
        criterion,
        build_optimizer(config.train, model, learning_rate=lambda: schedule(step)),
        tf.distribute.get_strategy(),
        step,
        accumulation_steps=2,
        replica_batch_size=4,
        seed=5,
        learning_rate=schedule,
        jit_compile=True,
    )


def test_run_folder_has_tensorboard_scalars_images_and_metrics(tmp_path):
    pattern = write_synthetic_tfrecords(tmp_path, num_images=2)
    config = training_config(pattern, str(tmp_path / "run"), max_steps=2, checkpoint_every=2)
    config.model.num_decoder_layers = 1
    result = train(config)
    assert result.status == "finished" and (tmp_path / "run" / "model.weights.h5").exists()
    tags = {}
    for events in (tmp_path / "run" / "tensorboard").glob("events.*"):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            for value in event.summary.value:
                tags.setdefault(value.tag, []).append((event.step, value.metadata.plugin_data.plugin_name))
    for tag in ("loss_total", "loss_ce", "loss_mask", "loss_dice", "loss_ce_0", "loss_dice_0"):
        assert tags[tag] == [(1, "scalars"), (2, "scalars")], tag
    for tag in ("train/learning_rate", "train/grad_norm", "train/images_per_s", "train/loss_scale"):
        assert [s for s, _ in tags[tag]] == [1, 2], tag
    assert tags["predictions"] == [(2, "images")]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]


def test_step_traces_once_for_every_instance_bucket():
    """Batches padded to their bucket (1, 2 or 4 slots) with varying instance counts: one trace."""
    from data.pipeline import pad_to_bucket

    config = _config()
    model = build_model(config)
    step_fn = _step_fn(config, model, 1, batch_size=2)
    counts = [(1, 0), (2, 1), (0, 1), (4, 2), (1, 1), (3, 0), (2, 2), (4, 4)]
    for i, (a, b) in enumerate(counts):
        full = _batch(2, seed=i)
        valid = np.zeros((2, 4), bool)
        valid[0, :a], valid[1, :b] = True, True
        real = max(a, b)
        batch = {**full, "valid": tf.constant(valid)}
        batch = {k: v[:, :real] if k in ("masks", "labels", "valid") else v for k, v in batch.items()}
        batch = pad_to_bucket(batch, config.data.max_instances)
        results = step_fn(batch)
        assert np.isfinite(float(results["loss_total"]))
    assert step_fn.tracing_count == 1
