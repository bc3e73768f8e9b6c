"""Prints the parity table (our model vs the reference implementation, same weights) for the README.

    python -m tools.parity_report            # R50, 2 x 160 x 224, float32 and float64 (~1 min on 2 cores)
    python -m tools.parity_report --size swin_t   # Swin-T, 2 x 160 x 256 (no stage a multiple of the window)

Needs `bash setup.sh --dev` (torch + transformers).
"""

import argparse

from tests.hf_reference import SIZES, compare  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="r50", choices=sorted(SIZES))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    images = (2, 160, 256) if SIZES[args.size]["model"].get("backbone") == "swin" else (2, 160, 224)
    results = {dtype: compare(args.size, dtype, args.seed, images) for dtype in ("float32", "float64")}
    print("| output | shape | max abs diff fp32 | max abs diff fp64 | max abs value |")
    print("|---|---|---|---|---|")
    for row32, row64 in zip(results["float32"][0], results["float64"][0], strict=True):
        name, shape, diff32, scale = row32
        print(f"| {name} | {tuple(shape)} | {diff32:.1e} | {row64[2]:.1e} | {scale:.2f} |")
    for dtype, (_, flips) in results.items():
        largest = max((float(abs(bits).max()) for bits in flips if len(bits)), default=0.0)
        counts = [len(bits) for bits in flips]
        print(f"\n{dtype}: attention-mask bits flipped per decoder layer: {counts} (largest |logit| {largest:.1e})")


if __name__ == "__main__":
    main()
