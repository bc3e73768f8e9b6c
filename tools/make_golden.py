"""Writes the tiny-config golden files that let the parity check run without torch.

    python -m tools.make_golden     # needs `bash setup.sh --dev`; rewrites tests/golden/tiny_*

`tiny_detectron2.pkl`: the reference's random weights under detectron2 names (what the loader reads);
`tiny_reference_outputs.npz`: the input images and every reference output (float32).
"""

import os
import pickle

import numpy as np

from tests.hf_reference import build_reference, hf_to_detectron2, run_reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

GOLDEN_DIR = os.path.join(ROOT, "tests", "golden")
IMAGE_SHAPE = (2, 96, 128, 3)  # non-square, a multiple of 32


def main():
    images = np.random.default_rng(1).uniform(0, 255, IMAGE_SHAPE).astype(np.float32)
    hf = build_reference("tiny", seed=1, calibration_images=images)
    os.makedirs(GOLDEN_DIR, exist_ok=True)
    with open(os.path.join(GOLDEN_DIR, "tiny_detectron2.pkl"), "wb") as f:
        pickle.dump({"model": hf_to_detectron2(hf.state_dict())}, f, protocol=4)
    outputs = {k: v.astype(np.float32) for k, v in run_reference(hf, images).items()}
    np.savez_compressed(os.path.join(GOLDEN_DIR, "tiny_reference_outputs.npz"), images=images, **outputs)
    print(f"wrote {GOLDEN_DIR}/tiny_detectron2.pkl and tiny_reference_outputs.npz ({len(outputs)} outputs)")


if __name__ == "__main__":
    main()
