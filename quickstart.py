"""The whole system on a CPU in minutes: synthetic data -> TFRecords -> training -> evaluation -> pictures.

    python quickstart.py                 # about 12 minutes on 2 CPU cores

1. writes the synthetic shapes dataset (COCO format, 400 training and 100 held-out images, 128 x 128)
   to datasets/quickstart/;
2. converts both splits to TFRecords with convert_coco_to_tfrecord.py;
3. trains the `quickstart` preset (a small Mask2Former) into runs/quickstart/ (run it again to resume);
4. evaluates COCO mask AP on the held-out split (runs/quickstart/metrics.json);
5. renders predictions on 8 held-out images to images/quickstart/ and plots the learning curve to
   runs/quickstart/learning_curve.png;
and ends with the line `held-out mask AP: ...`. Any `--set section.field=value` override is passed
to the configuration; a run folder keeps the settings it was started with (train.py refuses to resume
it with others), so give a changed run its own folder, e.g. a shorter one:

    python quickstart.py --set train.max_steps=200 train.output_dir=runs/quickstart_200
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import cli
from config import Mask2FormerConfig

ROOT = os.path.dirname(os.path.abspath(__file__))
DATA_DIR = "datasets/quickstart"
RENDER_DIR = "images/quickstart"
SPLITS = {"train": 400, "val": 100}


def make_data(config: Mask2FormerConfig) -> None:
    """Synthetic images + COCO annotations, then TFRecords (skipped when already there)."""
    import convert_coco_to_tfrecord
    from data.synthetic import SyntheticSpec, write_dataset

    if os.path.exists(config.data.categories_file):
        print(f"[1/5] data: reusing {DATA_DIR}")
        return
    print(f"[1/5] data: writing the synthetic shapes dataset to {DATA_DIR}")
    height, width = config.data.image_size
    write_dataset(DATA_DIR, SyntheticSpec(height=height, width=width, seed=0, image_format="png"), SPLITS)
    for split in SPLITS:
        argv = [
            f"--image_dir={DATA_DIR}/{split}",
            f"--object_annotations_file={DATA_DIR}/annotations/instances_{split}.json",
            f"--output_file_prefix={DATA_DIR}/tfrecords/{split}",
            "--num_shards=2",
            "--strict",
        ]
        if convert_coco_to_tfrecord.main(argv) != 0:
            raise SystemExit(f"quickstart: converting the {split} split failed (see above)")


def write_montage(folder: str, names: list[str]) -> str:
    import cv2
    import numpy as np

    """The rendered images side by side in two rows: images/quickstart/montage.png."""
    tiles = [cv2.imread(os.path.join(folder, name)) for name in names]
    rows = [np.concatenate(tiles[i : i + 4], axis=1) for i in range(0, len(tiles), 4)]
    path = os.path.join(folder, "montage.png")
    cv2.imwrite(path, np.concatenate(rows, axis=0))
    return path


def plot_learning_curve(run_dir: str) -> str:
    """runs/quickstart/learning_curve.png from metrics.jsonl (total loss and its parts, smoothed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (
        ("loss_total", "total"),
        ("loss_ce", "class (final set)"),
        ("loss_mask", "mask BCE"),
        ("loss_dice", "dice"),
    ):
        values = [r[key] for r in rows]
        window = 20
        smooth = [
            sum(values[max(0, i - window + 1) : i + 1]) / len(values[max(0, i - window + 1) : i + 1])
            for i in range(len(values))
        ]
        ax.plot(steps, smooth, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (moving average of 20 steps)")
    ax.set_title("Mask2Former quickstart: training loss on the synthetic shapes")
    ax.legend()
    ax.grid(alpha=0.3)
    path = os.path.join(run_dir, "learning_curve.png")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> float:
    parser = cli.parser(__doc__)
    parser.add_argument("--set", nargs="+", default=[], metavar="SECTION.FIELD=VALUE", help="config overrides")
    args = cli.parse(parser, argv)
    cli.import_tensorflow()
    import cv2

    config = Mask2FormerConfig.preset("quickstart")
    for item in args.set:
        key, _, value = item.partition("=")
        config.set(key, value)
    config.validate()
    started = time.time()

    make_data(config)

    print(f"[2/5] training the quickstart model into {config.train.output_dir} ({config.train.max_steps} steps)")
    from training.loop import FINAL_WEIGHTS, train

    result = train(config)
    if result.status != "finished":
        raise SystemExit(f"quickstart: training stopped ({result.status}); see {config.train.output_dir}")
    weights = os.path.join(config.train.output_dir, FINAL_WEIGHTS)

    print("[3/5] evaluating mask AP on the held-out split")
    from inference.loading import load_model
    from inference.model_evaluation import evaluate_model, tfrecord_eval_set

    model = load_model(config, weights_path=weights)
    metrics = evaluate_model(
        model, tfrecord_eval_set(config, config.data.val_files, "instance"), config, "instance", batch_size=8
    )
    metrics_path = os.path.join(config.train.output_dir, "metrics.json")
    with open(metrics_path, "w") as f:
        json.dump(metrics, f, indent=1)

    print(f"[4/5] rendering predictions on 8 held-out images to {RENDER_DIR}")
    examples = os.path.join(DATA_DIR, "render_examples")
    os.makedirs(examples, exist_ok=True)
    for name in sorted(os.listdir(os.path.join(DATA_DIR, "val")))[:8]:
        # 4x larger copies so the labels are readable; test.py resizes them to the model's 128 px
        # and draws the masks back at 512 px.
        image = cv2.imread(os.path.join(DATA_DIR, "val", name))
        cv2.imwrite(os.path.join(examples, name), cv2.resize(image, None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC))
    subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "test.py"),
            "--config",
            os.path.join(config.train.output_dir, "config.json"),
        ]
        + ["--weights", weights, "--images", examples, "--output", RENDER_DIR]
        + ["--categories", config.data.categories_file],
        check=True,
    )

    montage = write_montage(RENDER_DIR, sorted(os.listdir(examples)))

    print("[5/5] plotting the learning curve")
    curve = plot_learning_curve(config.train.output_dir)

    ap = metrics["segm"]["AP"]
    print(
        f"\ndone in {(time.time() - started) / 60:.1f} min:\n"
        f"  data          {DATA_DIR}/ (COCO JSON, PNGs, TFRecords)\n"
        f"  run           {config.train.output_dir}/ (config.json, checkpoints/, tensorboard/, metrics.jsonl)\n"
        f"  weights       {weights}\n"
        f"  metrics       {metrics_path} (mask AP {ap:.3f}, box AP {metrics['bbox']['AP']:.3f})\n"
        f"  learning      {curve}\n"
        f"  pictures      {RENDER_DIR}/ (all eight side by side: {montage})\n"
        f"held-out mask AP: {ap:.3f}"
    )
    return ap


if __name__ == "__main__":
    sys.exit(cli.run(main))
