"""Learning, measured: a small config overfits 2 images of the quickstart's synthetic dataset to mask AP > 0.9."""

import json

import pytest

import convert_coco_to_tfrecord
from data.synthetic import SyntheticSpec, write_dataset
from inference.loading import load_model
from inference.model_evaluation import evaluate_model, tfrecord_eval_set
from tests.helpers import tiny_config
from training.loop import FINAL_WEIGHTS, train


@pytest.mark.slow
def test_small_config_overfits_two_synthetic_images(tmp_path):
    spec = SyntheticSpec(seed=0, height=64, width=64, min_objects=2, max_objects=3, image_format="png")
    write_dataset(str(tmp_path / "synthetic"), spec, {"train": 2})
    argv = ["--image_dir", str(tmp_path / "synthetic" / "train")]
    argv += ["--object_annotations_file", str(tmp_path / "synthetic" / "annotations" / "instances_train.json")]
    argv += ["--output_file_prefix", str(tmp_path / "records" / "train"), "--num_shards=1", "--num_workers=1"]
    assert convert_coco_to_tfrecord.main(argv) == 0

    config = tiny_config(num_classes=4, num_decoder_layers=3, encoder_layers=1)
    config.data.train_files = config.data.val_files = str(tmp_path / "records" / "train-*.tfrecord")
    config.data.image_size, config.data.scale_range, config.data.horizontal_flip = (64, 64), (1.0, 1.0), False
    config.data.max_instances, config.data.min_size_test, config.data.max_size_test = 4, 64, 64
    config.loss.num_points = 256
    t = config.train
    t.batch_size, t.max_steps, t.learning_rate, t.mixed_precision = 2, 600, 1e-3, "float32"
    t.backbone_weights, t.output_dir, t.checkpoint_every, t.log_every = "", str(tmp_path / "run"), 200, 10
    result = train(config.validate())
    assert result.status == "finished"
    curve = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(curve) == 600 and curve[-1]["loss_total"] < 0.3 * curve[0]["loss_total"]

    model = load_model(config, weights_path=str(tmp_path / "run" / FINAL_WEIGHTS))
    metrics = evaluate_model(model, tfrecord_eval_set(config, config.data.val_files, "instance"), config, "instance")
    print("mask AP on the 2 training images:", metrics["segm"]["AP"])
    assert metrics["segm"]["AP"] > 0.9
