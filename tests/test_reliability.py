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
from config import ConfigError
from data.pipeline import build_dataset
from losses import build_criterion
from model import build_model
from tests.helpers import tiny_config
from tests.synthetic_coco import training_config, write_synthetic_tfrecords
from tests.test_data_pipeline import CATEGORIES, _write_shards, make_example, random_instances
from tests.test_training_step import _batch, _config, _PoisonedCriterion, _step_fn
from training.checkpointing import KerasCheckpoints, TrainingCheckpoints
from training.loop import train
from training.optimizer import build_optimizer
from training.resume import check_resume_config
from training.schedules import build_schedule

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------- empty and half-empty batches
EMPTY_CASES = {"all empty": [0, 1], "half empty": [1]}  # case -> the images whose targets the crop removed

KERAS_EMPTY_RUN = """
import json, sys, numpy as np, keras
from losses import build_criterion
from model import build_model
from tests.test_reliability import EMPTY_CASES, empty_batches, per_image_terms
from tests.test_training_step import _config
from training.keras_step import KerasTrainStep
from training.optimizer import build_optimizer
from training.schedules import build_schedule

config = _config()
model = build_model(config)
model(np.zeros((1, 64, 64, 3), np.float32))
criterion = build_criterion(config, dynamic_pairs=keras.backend.backend() != "jax")
optimizer = build_optimizer(config.train, model, learning_rate=config.train.learning_rate)
step_fn = KerasTrainStep(model, criterion, optimizer, build_schedule(config.train))
head = model.transformer_decoder.class_embed.kernel
results = []
for batch in empty_batches():
    before = keras.ops.convert_to_numpy(head)
    losses = step_fn(batch, len(results))
    step_fn.sync()
    changed = not np.array_equal(keras.ops.convert_to_numpy(head), before)
    results.append({"losses": losses, "head_changed": changed, "images": per_image_terms(model, criterion, batch)})
print("RESULT " + json.dumps(results))
"""


def empty_batches() -> list[dict]:
    """Two batches of 2 images as numpy arrays: every image without targets, and the second one without."""
    batches = []
    for i, empty in enumerate(EMPTY_CASES.values()):
        batch = {k: np.array(v) for k, v in _batch(batch_size=2, seed=i).items()}
        batch["valid"][empty] = False
        batches.append(batch)
    return batches


def per_image_terms(model, criterion, batch) -> list[dict]:
    """The criterion's terms for each image of `batch` alone (the model in training mode)."""
    import keras

    outputs = model(batch["image"], training=True)
    terms = []
    for i in range(len(batch["image"])):
        alone = {k: batch[k][i : i + 1] for k in ("masks", "labels", "valid")}
        one = {
            "pred_logits": outputs["pred_logits"][i : i + 1],
            "pred_masks": outputs["pred_masks"][i : i + 1],
            "aux_outputs": [{k: v[i : i + 1] for k, v in aux.items()} for aux in outputs["aux_outputs"]],
        }
        terms.append({k: float(keras.ops.convert_to_numpy(v)) for k, v in criterion(one, alone).items()})
    return terms


def _tensorflow_runs(config) -> list[dict]:
    model = build_model(config)
    batches = [{k: tf.constant(v) for k, v in batch.items()} for batch in empty_batches()]
    step_fn = _step_fn(config, model, 1, batch_size=2)
    head = model.transformer_decoder.class_embed.kernel
    results = []
    for batch in batches:
        before = head.numpy()
        losses = {k: float(v) for k, v in step_fn(batch).items()}
        images = per_image_terms(model, build_criterion(config), {k: v.numpy() for k, v in batch.items()})
        results.append({"losses": losses, "head_changed": not np.array_equal(head.numpy(), before), "images": images})
    return results


def _subprocess_runs(backend) -> list[dict]:
    env = {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu", "OMP_WAIT_POLICY": "PASSIVE"}
    run = subprocess.run(
        [sys.executable, "-c", KERAS_EMPTY_RUN], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.split("RESULT ", 1)[1].splitlines()[0])


@pytest.mark.parametrize("backend", ["tensorflow", "torch", pytest.param("jax", marks=pytest.mark.slow)])
def test_batches_with_images_left_without_targets_train(backend):
    """detectron2's test_empty_data / test_half_empty_data: a step where every image lost its targets to
    the crop, and one where one of two did: finite loss, update applied, mask and dice terms exactly 0
    for an image without targets (checked image by image), class terms positive; on every backend."""
    config = _config()
    runs = _tensorflow_runs(config) if backend == "tensorflow" else _subprocess_runs(backend)
    for (case, empty), run in zip(EMPTY_CASES.items(), runs, strict=True):
        losses = run["losses"]
        assert all(np.isfinite(v) for v in losses.values()), (case, losses)
        assert losses["applied"] == 1.0 and run["head_changed"], case  # the update was applied
        mask_terms = [k for k in losses if k.startswith(("loss_mask", "loss_dice"))]
        class_terms = [k for k in losses if k.startswith("loss_ce")]
        assert len(mask_terms) == 2 * len(class_terms) == 2 * (config.model.num_decoder_layers + 1)
        assert all(losses[k] > 0 for k in class_terms), (case, losses)
        assert all((losses[k] == 0.0) == (len(empty) == 2) for k in mask_terms), (case, losses)
        for i, terms in enumerate(run["images"]):  # each image alone
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


# ----------------------------------------------------------------- resume restores everything
def _training_state(config, start_step: int = 0):
    """Model, step, schedule and optimizer built as `training.loop.train` builds them."""
    model = build_model(config)
    step = tf.Variable(start_step, dtype=tf.int64)
    schedule = build_schedule(config.train)
    return model, step, schedule, build_optimizer(config.train, model, learning_rate=lambda: schedule(step))


def _update(model, optimizer, step, seed):
    rng = np.random.default_rng(seed)
    grads = [tf.constant(rng.normal(0, 1e-3, v.shape), v.dtype) for v in model.trainable_variables]
    optimizer.apply(grads, model.trainable_variables)
    step.assign_add(1)


def test_resume_restores_the_step_the_schedule_position_and_the_learning_rate(tmp_path):
    """detectron2's test_checkpoint_resume: a rebuilt optimizer starts with a wrong learning rate (its step
    counter at 0: warm-up's first value); after resuming, the step, the optimizer's update count (its
    schedule position) and the learning rate are the saved ones, and the next update equals the one the
    uninterrupted run makes. A changed train.learning_rate is refused on resume; a killed write's partial
    files are removed."""
    config = training_config("unused", str(tmp_path), max_steps=20, warmup_steps=10, lr_schedule="poly")
    model, step, schedule, optimizer = _training_state(config)
    for i in range(7):
        _update(model, optimizer, step, seed=i)
    saved_lr = float(optimizer.learning_rate)
    TrainingCheckpoints(str(tmp_path), model=model, optimizer=optimizer, step=step, keep=2).save()

    resumed_model, resumed_step, resumed_schedule, resumed_optimizer = _training_state(config)
    wrong_lr = float(resumed_optimizer.learning_rate)
    assert wrong_lr != pytest.approx(saved_lr, rel=1e-3)  # a fresh optimizer's rate is not the saved one
    checkpoints = TrainingCheckpoints(
        str(tmp_path), model=resumed_model, optimizer=resumed_optimizer, step=resumed_step, keep=2
    )
    killed_write = tmp_path / "checkpoints" / "ckpt-8_temp"  # what a write killed by SIGKILL leaves
    killed_write.mkdir()
    (killed_write / "part-00000-of-00001.data-00000-of-00001.tempstate123").write_bytes(b"partial")
    assert checkpoints.restore_latest().endswith("ckpt-7")
    assert not killed_write.exists()
    assert int(resumed_step.numpy()) == 7 and int(resumed_optimizer.iterations.numpy()) == 7
    assert float(resumed_optimizer.learning_rate) == saved_lr == float(schedule(7))
    _update(model, optimizer, step, seed=7)
    _update(resumed_model, resumed_optimizer, resumed_step, seed=7)
    for a, b in zip(model.variables, resumed_model.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    assert float(resumed_optimizer.learning_rate) == float(optimizer.learning_rate) == float(schedule(8))

    config.save(str(tmp_path / "config.json"))
    changed = training_config("unused", str(tmp_path), max_steps=20, warmup_steps=10, lr_schedule="poly")
    changed.train.learning_rate *= 10
    with pytest.raises(ConfigError, match=r"train\.learning_rate: 0\.0001 -> 0\.001"):
        check_resume_config(str(tmp_path / "config.json"), changed, allow_change=False)


def test_keras_checkpoints_resume_past_a_killed_write(tmp_path):
    """The JAX / PyTorch checkpoints (`.npz`, here on TensorFlow): a write killed before its rename leaves
    `ckpt-N.npz.<hex>.tmp`; resuming restores the previous checkpoint's variables and step and removes it."""
    config = training_config("unused", str(tmp_path), max_steps=20, warmup_steps=10)
    model, step, _, optimizer = _training_state(config)
    for i in range(3):
        _update(model, optimizer, step, seed=i)
    KerasCheckpoints(str(tmp_path), model=model, optimizer=optimizer, keep=2).save(3)
    killed_write = tmp_path / "checkpoints" / "ckpt-4.npz.0123abcd.tmp"
    killed_write.write_bytes(b"PK partial")
    resumed_model, _, _, resumed_optimizer = _training_state(config)
    path, resumed_step = KerasCheckpoints(
        str(tmp_path), model=resumed_model, optimizer=resumed_optimizer, keep=2
    ).restore_latest()
    assert (Path(path).name, resumed_step) == ("ckpt-3.npz", 3)
    assert not killed_write.exists()
    assert int(resumed_optimizer.iterations.numpy()) == 3
    for a, b in zip(model.variables, resumed_model.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


# ----------------------------------------------------------------- no leaks
# Objects a 10-step span of training may add: measured 3 (the measurement's own Counter, and a regular
# expression and its bound method that `re` caches at a checkpoint save, a bounded cache); one object
# leaked per step would add 10 to every span. Once in a run, at a moment that varies, about 100 weak
# references fill `abc`'s isinstance caches (bounded by the number of classes): so the median span counts.
LEAK_TOLERANCE = 5


@pytest.mark.slow
def test_a_predictor_holds_steady_memory_over_200_images():
    """Resident memory after 200 images is within 5% of what it was after a 20-image warm-up."""
    from inference.predictor import Predictor

    config = tiny_config(num_classes=4)
    config.data.min_size_test = config.data.max_size_test = 64
    predictor = Predictor(build_model(config), config)
    images = np.random.default_rng(0).integers(0, 255, (200, 48, 64, 3), dtype=np.uint8)
    resident = []
    for i, image in enumerate(images):
        (result,) = predictor([image])
        assert result.masks.shape[1:] == (48, 64)
        if i % 20 == 19:
            gc.collect()
            resident.append(resident_gb())
    growth = resident[-1] / resident[0] - 1
    print(f"resident after 20 images {resident[0]:.3f} GB, after 200 {resident[-1]:.3f} GB ({100 * growth:+.1f}%)")
    assert growth <= 0.05, resident


def _object_counts() -> Counter:
    gc.collect()
    return Counter(type(o).__name__ for o in gc.get_objects())


@pytest.mark.slow
def test_a_training_loop_of_50_steps_leaks_no_python_objects(tmp_path):
    """Model Garden's trainer tests: no uncollectable garbage, and after a warm-up of 20 steps (two
    checkpoints) the live Python objects stay put over the spans 20 -> 30 -> 40 -> 50, each writing a
    checkpoint, TensorBoard summaries and a render (see LEAK_TOLERANCE)."""
    from training.reporting import TrainingReporter

    pattern = write_synthetic_tfrecords(tmp_path / "data", num_images=4)
    config = training_config(pattern, str(tmp_path / "run"), max_steps=50, checkpoint_every=10)
    config.model.num_decoder_layers = 1
    counts = {}
    step_done = TrainingReporter.step_done

    def counting_step_done(self, step, results):
        scalars = step_done(self, step, results)
        if step in (20, 30, 40, 50):
            counts[step] = _object_counts()
        return scalars

    gc.collect()
    garbage_before = len(gc.garbage)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TrainingReporter, "step_done", counting_step_done)
        result = train(config)
    assert result.status == "finished" and result.step == 50
    assert len(gc.garbage) == garbage_before == 0
    growth = {}
    for first, last in ((20, 30), (30, 40), (40, 50)):
        grown = {name: counts[last][name] - counts[first][name] for name in counts[last]}
        growth[first, last] = {name: n for name, n in grown.items() if n > 0}
        print(f"steps {first} -> {last}: {sum(growth[first, last].values())} more objects", growth[first, last])
    totals = sorted(sum(grown.values()) for grown in growth.values())
    assert totals[1] <= LEAK_TOLERANCE and totals[-1] <= 200, growth


# ----------------------------------------------------------------- evaluation speed
@pytest.mark.slow
def test_evaluation_per_image_is_at_most_1_25x_inference_per_image(tmp_path):
    """test_map.py's evaluation loop per image against test.py's (predict, draw, write PNG and JSON) on the
    same 480x640 synthetic images with the same tiny model, compiled once for both (the scripts' fixed
    start-up left out); the official evaluation is 6x slower than its inference per image. The class
    head is scaled so that, as with a trained model, a few results per image pass the score threshold."""
    import test as test_py
    from data.categories import Categories
    from data.synthetic import SyntheticSpec, write_dataset
    from inference.model_evaluation import coco_json_eval_set, evaluate_model
    from inference.predictor import Predictor, compiled

    count, height, width = 10, 480, 640
    write_dataset(str(tmp_path), SyntheticSpec(seed=0, height=height, width=width), {"val": count})
    gt = str(tmp_path / "annotations" / "instances_val.json")
    categories = Categories.from_coco(json.loads(Path(gt).read_text())["categories"])
    config = tiny_config(num_classes=categories.num_classes)
    config.data.min_size_test, config.data.max_size_test = height, width
    model = build_model(config)
    head = model.transformer_decoder.class_embed.kernel
    head.assign(head.numpy() * 20)
    network = compiled(model, config)
    paths = test_py.list_images(str(tmp_path / "val"))
    threshold = config.inference.score_threshold

    def inference():
        predictor = Predictor(network, config, isthing=categories.isthing)
        predictor.postprocess.min_score = threshold  # as test.py does
        return test_py.run(predictor, paths, str(tmp_path / "res"), categories, threshold, 1)

    def evaluation():
        return evaluate_model(
            network, coco_json_eval_set(config, gt, str(tmp_path / "val"), "instance"), config, "instance"
        )

    times = {inference: [], evaluation: []}
    with contextlib.redirect_stdout(io.StringIO()):
        inference(), evaluation()  # warm-up: the compiled model's first call
        for _ in range(3):
            for run in times:
                start = time.perf_counter()
                run()
                times[run].append((time.perf_counter() - start) / count)
    drawn = [len(json.loads(p.read_text())["instances"]) for p in (tmp_path / "res").glob("*.json")]
    per_image = {run: statistics.median(t) for run, t in times.items()}
    ratio = per_image[evaluation] / per_image[inference]
    print(
        f"{height}x{width}: test.py {1000 * per_image[inference]:.0f} ms/image, test_map.py "
        f"{1000 * per_image[evaluation]:.0f} ms/image ({ratio:.2f}x); {np.mean(drawn):.1f} results drawn per image"
    )
    assert np.mean(drawn) >= 1
    assert ratio <= 1.25


# ----------------------------------------------------------------- many instances
CROWDED_RUN = """
import json, sys
sys.path.insert(0, sys.argv[1])
from bench.harness import peak_resident_gb
from config import Mask2FormerConfig
from training.loop import train
result = train(Mask2FormerConfig.load(sys.argv[2]))
print("RESULT " + json.dumps({"status": result.status, "peak_gb": peak_resident_gb(),
                              "loss": result.history[-1]["loss_total"]}))
"""


def _grid_of_instances(count: int, size: int) -> np.ndarray:
    """(count, size, size) uint8: a grid of squares, instance n covering a larger one than n - 1."""
    side = int(np.ceil(np.sqrt(count)))
    cell = size // side
    masks = np.zeros((count, size, size), np.uint8)
    for n in range(count):
        y, x = divmod(n, side)
        extent = 4 + n * (cell - 4) // count
        masks[n, y * cell : y * cell + extent, x * cell : x * cell + extent] = 1
    return masks


def _write_record(folder: Path, masks: np.ndarray) -> str:
    count, size = masks.shape[:2]
    image = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    classes = [CATEGORIES.ids[n % 3] for n in range(count)]
    return _write_shards(folder, [make_example(image, masks, classes, [False] * count)], num_shards=1)


def _train_in_subprocess(config, path: Path) -> tuple[dict, str]:
    config.save(str(path))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, "-c", CROWDED_RUN, str(ROOT), str(path)], env=env, capture_output=True, text=True, timeout=1800
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(lines[0][len("RESULT ") :]), done.stdout


@pytest.mark.slow
def test_an_image_of_300_instances_at_1024_trains_and_the_default_keeps_the_largest_128(tmp_path):
    masks = _grid_of_instances(300, 1024)
    pattern = _write_record(tmp_path / "data", masks)
    config = training_config(pattern, str(tmp_path / "raised"), max_steps=3, checkpoint_every=10)
    config.model.num_classes = 3
    config.data.image_size, config.data.scale_range, config.data.horizontal_flip = (1024, 1024), (1.0, 1.0), False
    config.data.max_instances = 300
    config.loss.num_points = 12544  # the official number of points per mask
    config.train.batch_size = 1
    raised, output = _train_in_subprocess(config, tmp_path / "raised.json")
    assert raised["status"] == "finished" and np.isfinite(raised["loss"]), output
    assert "more than data.max_instances" not in output
    batch = next(iter(build_dataset(config, "train", batch_size=1, bucket_instances=True)))
    assert int(batch["valid"].numpy().sum()) == 300

    config.data.max_instances = 128  # the default
    config.train.output_dir = str(tmp_path / "default")
    default, output = _train_in_subprocess(config, tmp_path / "default.json")
    assert default["status"] == "finished" and np.isfinite(default["loss"]), output
    assert output.count("data: an image has 300 targets, more than data.max_instances=128") == 1, output
    batch = next(iter(build_dataset(config, "train", batch_size=1, bucket_instances=True)))
    kept = batch["masks"].numpy()[0].reshape(128, -1).sum(axis=1)
    assert batch["valid"].numpy().all()
    assert sorted(kept) == sorted(masks.reshape(300, -1).sum(axis=1))[-128:]  # the 128 largest
    print(
        f"300 instances at 1024x1024, one image per step: peak resident {raised['peak_gb']:.2f} GB "
        f"(max_instances 300), {default['peak_gb']:.2f} GB (default 128, largest kept)"
    )
