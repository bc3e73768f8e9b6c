"""Reliability as detectron2, mmdetection and Model Garden test theirs: empty and half-empty batches, many
instances, resume restoring everything, non-finite recovery, no leaked objects, evaluation speed.
(The SIGKILL soak is tests/test_kill_soak.py.)"""

import contextlib
import gc
import hashlib
import io
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from bench.harness import resident_gb
from config import ConfigError, check_resume_config
from data.pipeline import build_dataset
from losses import build_criterion
from model import build_model
from tests.helpers import tiny_config
from tests.synthetic_coco import training_config, write_synthetic_tfrecords
from tests.test_data_pipeline import CATEGORIES, _write_shards, make_example, random_instances
from tests.test_training_step import _batch, _config, _PoisonedCriterion, _step_fn
from training.checkpointing import TrainingCheckpoints
from training.loop import train
from training.optimizer import build_optimizer
from training.schedules import build_schedule

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------- empty and half-empty batches
def _tensorflow_steps(config, model, batches):
    """One `TrainStep` (traced once) on each batch in turn -> [(loss dict of floats, weights before it)]."""
    step_fn = _step_fn(config, model, 1, batch_size=int(batches[0]["image"].shape[0]))
    runs = []
    for batch in batches:
        before = [v.numpy() for v in model.trainable_variables]
        runs.append(({k: float(v) for k, v in step_fn(batch).items()}, before))
    return runs


STEPS_ON = {"tensorflow": _tensorflow_steps}  # backend -> training steps (a JAX step joins with the port)


def _without_targets(batch, images):
    """`batch` with every target of the given images removed (as a crop that left none of their objects)."""
    valid = batch["valid"].numpy().copy()
    valid[images] = False
    return {**batch, "valid": tf.constant(valid)}


@pytest.mark.parametrize("backend", sorted(STEPS_ON))
def test_batches_with_images_left_without_targets_train(backend):
    """detectron2's test_empty_data / test_half_empty_data: a step where every image lost its targets to
    the crop, and one where one of two did: finite loss, update applied, mask and dice terms exactly 0
    for an image without targets (checked image by image), class terms positive."""
    config = _config()
    model = build_model(config)
    cases = {"all empty": [0, 1], "half empty": [1]}
    batches = [_without_targets(_batch(batch_size=2, seed=i), empty) for i, empty in enumerate(cases.values())]
    criterion = build_criterion(config)
    head = next(i for i, v in enumerate(model.trainable_variables) if v is model.transformer_decoder.class_embed.kernel)
    for (case, empty), batch, (losses, before) in zip(
        cases.items(), batches, STEPS_ON[backend](config, model, batches), strict=True
    ):
        assert all(np.isfinite(v) for v in losses.values()), (case, losses)
        assert losses["applied"] == 1.0, case
        assert not np.array_equal(model.trainable_variables[head].numpy(), before[head]), case  # update applied
        mask_terms = [k for k in losses if k.startswith(("loss_mask", "loss_dice"))]
        class_terms = [k for k in losses if k.startswith("loss_ce")]
        assert len(mask_terms) == 2 * len(class_terms) == 2 * (config.model.num_decoder_layers + 1)
        assert all(losses[k] > 0 for k in class_terms), (case, losses)
        assert all((losses[k] == 0.0) == (len(empty) == 2) for k in mask_terms), (case, losses)

        outputs = model(batch["image"], training=True)
        for i in range(2):  # each image alone
            alone = {k: batch[k][i : i + 1] for k in ("masks", "labels", "valid")}
            terms = criterion(tf.nest.map_structure(lambda x: x[i : i + 1], outputs), alone)  # noqa: B023
            terms = {k: float(v) for k, v in terms.items()}
            assert all(terms[k] > 0 for k in class_terms), (case, i, terms)
            assert all((terms[k] == 0.0) == (i in empty) for k in mask_terms), (case, i, terms)


# ----------------------------------------------------------------- many instances, non-finite stop
def _crowded_records(tmp_path, count=6, images=3):
    """`images` 64x64 records of `count` small instances each (CATEGORIES: 3 classes)."""
    records = [
        make_example(*random_instances(count, 64, 64, seed=n), [False] * count, source_id=n) for n in range(images)
    ]
    tmp_path.mkdir(parents=True, exist_ok=True)
    return _write_shards(tmp_path, records)


def _file_hashes(prefix: str) -> dict[str, str]:
    return {
        os.path.basename(p): hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in tf.io.gfile.glob(prefix + ".*")
    }


@pytest.fixture(scope="module")
def crowded_poisoned_run(tmp_path_factory):
    """A run on images of 6 targets with data.max_instances 4 whose loss turns NaN from step 3 on
    (train.max_nonfinite_steps 2, a checkpoint every step). Records each checkpoint's file hashes and the
    model's variables when it was written. Returns (result, printed text, {step: (hashes, variables)})."""
    tmp_path = tmp_path_factory.mktemp("crowded")
    pattern = _crowded_records(tmp_path / "data")
    config = training_config(pattern, str(tmp_path / "run"), max_steps=8, checkpoint_every=1, max_nonfinite_steps=2)
    config.model.num_classes = 3
    config.model.num_decoder_layers = 1
    config.data.scale_range = (1.0, 1.0)  # every instance stays in the crop
    saved = {}
    real_save = TrainingCheckpoints.save

    def recording_save(self):
        path = real_save(self)
        variables = {name: v.numpy().copy() for name, v in self.checkpoint.model.items()}
        saved[int(self.step.numpy())] = (_file_hashes(path), variables)
        return path

    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setattr(TrainingCheckpoints, "save", recording_save)
        result = train(config, criterion=_PoisonedCriterion(build_criterion(config), poison_from=3))
    return config, result, printed.getvalue(), saved


def test_more_targets_than_max_instances_is_said_once_per_run(crowded_poisoned_run):
    config, result, printed, _ = crowded_poisoned_run
    batches = list(build_dataset(config, "train", batch_size=2, bucket_instances=True).take(result.step))
    assert all(int(b["num_targets"].numpy().max()) == 6 for b in batches)  # every step's batch is over the limit
    assert all(b["valid"].shape[1] == 4 and b["valid"].numpy().all() for b in batches)  # the 4 largest kept
    lines = [line for line in printed.splitlines() if "more than data.max_instances=4" in line]
    assert len(lines) == 1, printed
    assert lines[0].startswith("data: an image has 6 targets") and "the largest 4 are kept" in lines[0]


def test_nonfinite_losses_stop_the_run_and_leave_the_last_good_checkpoint_byte_for_byte(crowded_poisoned_run):
    """Model Garden's test_recovery: after train.max_nonfinite_steps the run stops; the newest checkpoint on
    disk is the last good one, its files unchanged since they were written and its variables the model's."""
    config, result, printed, saved = crowded_poisoned_run
    assert result.status == "stopped_nonfinite" and result.step == 4
    assert [h["applied"] for h in result.history] == [1.0, 1.0, 0.0, 0.0]
    assert sorted(saved) == [1, 2] and result.last_checkpoint.endswith("ckpt-2")
    assert tf.train.latest_checkpoint(os.path.dirname(result.last_checkpoint)) == result.last_checkpoint
    hashes, variables = saved[2]
    assert _file_hashes(result.last_checkpoint) == hashes and len(hashes) == 2  # .index and one .data shard
    reader = tf.train.load_checkpoint(result.last_checkpoint)
    model_keys = [k for k in reader.get_variable_to_shape_map() if k.startswith("model/") and "OPTIMIZER" not in k]
    assert len(model_keys) == len(variables) == len(result.model.variables)
    for name, value in variables.items():  # tf.train.Checkpoint escapes "." as ".." and "/" as ".S"
        key = "model/" + name.replace(".", "..").replace("/", ".S") + "/.ATTRIBUTES/VARIABLE_VALUE"
        np.testing.assert_array_equal(reader.get_tensor(key), value, err_msg=name)
    for v in result.model.variables:  # the skipped steps changed nothing
        np.testing.assert_array_equal(v.numpy(), variables[v.path.split("/", 1)[-1]], err_msg=v.path)
    assert "stopped after 2 non-finite losses in a row at step 4" in printed and "ckpt-2" in printed.splitlines()[-1]
