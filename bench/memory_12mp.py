"""Peak memory of `test.py` on a 12-megapixel photo with the R50 model (80 classes, 100 queries).

    python -m bench.memory_12mp [--width 4000 --height 3000] [--task instance] [--score_threshold 0.5]

Writes a 4000 x 3000 JPEG and the R50 COCO-instance model's random weights (`.weights.h5`) to a
temporary folder, runs `python test.py --weights ... --images photo.jpg` in a fresh process and prints
that process's peak resident memory (VmHWM), e.g.

    test.py on a 4000x3000 photo, R50 80 classes 100 queries (instance): peak RSS 2.41 GB, 95.2 s

test.py makes full-size masks only for results that can reach its drawing threshold (default 0.5);
random weights reach none, so `--score_threshold 0` shows the worst case: all 100 results of the
official top-100 at full size (1.2 GB of masks alone).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs (from ROOT) test.py's main in this process and reports the process's own peak RSS (Linux: KiB).
WRAPPER = (
    "import cli, test\n"
    "status = cli.run(test.main, {argv!r})\n"
    "from bench.harness import peak_resident_gb\n"
    "print('peak_rss_kib', round(peak_resident_gb() * 2**20), 'status', status)\n"
)


def make_inputs(folder: str, height: int, width: int) -> tuple[str, str]:
    """A photo-like JPEG (smooth gradients and a few shapes) and random R50 weights."""
    code = (
        "import sys, numpy as np, cv2\n"
        "h, w = int(sys.argv[2]), int(sys.argv[3])\n"
        "y, x = np.mgrid[0:h, 0:w]\n"
        "image = np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (h + w)], -1).astype(np.uint8)\n"
        "cv2.circle(image, (w // 3, h // 2), h // 5, (200, 40, 40), -1)\n"
        "cv2.rectangle(image, (w // 2, h // 4), (w * 4 // 5, h * 3 // 4), (40, 200, 60), -1)\n"
        "cv2.imwrite(sys.argv[1] + '/photo.jpg', image)\n"
        "import cli; cli.import_tensorflow()\n"
        "from config import Mask2FormerConfig; from model import build_model\n"
        "build_model(Mask2FormerConfig()).save_weights(sys.argv[1] + '/r50.weights.h5')\n"
    )
    subprocess.run([sys.executable, "-c", code, folder, str(height), str(width)], check=True, cwd=ROOT)
    return os.path.join(folder, "photo.jpg"), os.path.join(folder, "r50.weights.h5")


def measure(photo: str, weights: str, output: str, task: str, threshold: float) -> tuple[float, float]:
    """(peak RSS in GB, seconds) of test.py on `photo` in a fresh process."""
    argv = ["--weights", weights, "--preset", "coco_instance", "--task", task, "--images", photo, "--output", output]
    argv += ["--score_threshold", str(threshold)]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", WRAPPER.format(argv=argv)], cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    line = [x for x in done.stdout.splitlines() if x.startswith("peak_rss_kib")]
    if done.returncode != 0 or not line or not line[0].endswith("status 0"):
        raise RuntimeError(f"test.py failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return int(line[0].split()[1]) * 1024 / 1e9, seconds


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--height", type=int, default=3000, help="photo height (default: 3000)")
    parser.add_argument("--width", type=int, default=4000, help="photo width (default: 4000)")
    parser.add_argument("--task", default="instance", choices=("instance", "panoptic", "semantic"), help="task")
    parser.add_argument(
        "--score_threshold", type=float, nargs="+", default=[0.5], help="test.py thresholds to measure in turn"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        photo, weights = make_inputs(folder, args.height, args.width)
        for threshold in args.score_threshold:
            peak, seconds = measure(photo, weights, os.path.join(folder, "res"), args.task, threshold)
            print(
                f"test.py on a {args.width}x{args.height} photo, R50 80 classes 100 queries ({args.task}, "
                f"--score_threshold {threshold}): peak RSS {peak:.2f} GB, {seconds:.1f} s",
                flush=True,
            )
    return peak


if __name__ == "__main__":
    main()
