"""How FID, KID and precision/recall behave at small n: the evidence behind FID_MIN_N.

    python scripts/fid_min_n.py [--spec specs/quickstart.yaml] [--draws 20]

Draws two disjoint sets of n real images of one class from the spec's real data (the
quickstart's normal phantoms by default), again and again, and prints, per n, the median and
the 5th-95th percentile range of their FID, KID and precision on 512 features of a seeded
random-weight ResNet-18. Two samples of one distribution: a figure from a synthetic set can
only be read where this floor is small and steady. The statistics are the estimators' (bias
and spread at n), so random features show them as well as trained ones.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from classifiers.data import load_square
from classifiers.models import build_classifier
from eval.fid import ClassifierFeatures, fid_kid, image_features, manifold
from synth.sources import read_real_images
from synth.spec import load_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=Path("specs/quickstart.yaml"))
    parser.add_argument("--label", default="normal")
    parser.add_argument("--image-size", type=int, default=48)
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--sizes", type=int, nargs="+", default=[5, 10, 20, 40, 80, 160])
    args = parser.parse_args()

    images = [i for i in read_real_images(load_spec(args.spec)) if i.label == args.label]
    torch.manual_seed(0)
    extractor = ClassifierFeatures(build_classifier("resnet18", 2).model, 512)
    pixels = np.stack([load_square(i.path, args.image_size) for i in images])
    features = image_features(torch.from_numpy(pixels).float().div(255)[:, None], extractor)
    print(f"{len(images)} real {args.label} images, {features.shape[1]} features")
    print("n a side | FID median (5-95%) | KID median (5-95%) | precision median (5-95%)")
    rng = np.random.default_rng(0)
    for n in args.sizes:
        fids, kids, precisions = [], [], []
        for _ in range(args.draws):
            order = rng.permutation(len(features))
            a, b = features[order[:n]], features[order[n : 2 * n]]
            distance = fid_kid(a, b)
            fids.append(distance.fid)
            kids.append(distance.kid)
            precisions.append(manifold(a, b).precision if n > 6 else np.nan)
        print(f"{n:8d} | {_spread(fids, 3)} | {_spread(kids, 4)} | {_spread(precisions, 2)}")


def _spread(values: list[float], digits: int) -> str:
    if np.isnan(values).all():
        return "— (k = 5 needs more than 6 images)"
    low, median, high = np.nanpercentile(values, [5, 50, 95])
    return f"{median:.{digits}f} ({low:.{digits}f} to {high:.{digits}f})"


if __name__ == "__main__":
    main()
