"""The gate, run in the generation worker right after each batch renders: the judge scores
every image as it will be stored (encoded, then read back through the one image reader), its
nearest real train image is found by exact search, and the thresholds decide.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from classifiers.data import LabelledImage
from classifiers.features import InnerProductIndex, centred_unit
from classifiers.train import predict_scores_and_features
from synth.curate.judge import load_judge
from synth.shards import encode_image
from synth.spec import QCSpec
from synth.storage import Location


@dataclass(frozen=True)
class QCScore:
    label_score: float  # the judge's probability of the intended class
    real_similarity: float  # centred cosine to the nearest real train image
    nearest_real: str  # that image's id
    reason: str | None  # why the image failed the gate; None when it passed

    @property
    def passed(self) -> bool:
        return self.reason is None


def failure_reason(label_score: float, real_similarity: float, qc: QCSpec) -> str | None:
    """Why a score fails the spec's thresholds, or None when it passes."""
    reasons = []
    if label_score < qc.min_label_score:
        reasons.append(f"label_score {label_score:.3f} < {qc.min_label_score:g}")
    if real_similarity > qc.max_real_similarity:
        reasons.append(f"real_similarity {real_similarity:.3f} > {qc.max_real_similarity:g}")
    return "; ".join(reasons) or None


def margin(score: QCScore, qc: QCSpec) -> float:
    """How far a score clears the tighter of its two thresholds (negative: by how much it
    misses): what on_exhausted: keep_best ranks attempts by."""
    return min(
        score.label_score - qc.min_label_score, qc.max_real_similarity - score.real_similarity
    )


class Gate:
    """The judge and the real reference, loaded once per worker from the run's qc/ folder."""

    def __init__(self, judge_folder: Location, qc: QCSpec, image_format: str) -> None:
        judge = load_judge(judge_folder)
        self.qc = qc
        self.image_format = image_format
        self.model = judge.model
        self.settings = judge.scoring_settings
        self.classes = list(judge.record.classes)
        self.reference = judge.reference
        self.index = InnerProductIndex(judge.reference.features)

    def score(self, images: list[Image.Image], labels: list[str]) -> list[QCScore]:
        """Each image's scores against its intended label."""
        if not images:
            return []
        items = [
            # Pixels as stored: lossy formats are scored after their encoding.
            LabelledImage(str(n), encode_image(image, self.image_format, {}), 0)
            for n, image in enumerate(images)
        ]
        probabilities, features = predict_scores_and_features(self.model, items, self.settings)
        similarity, nearest = self.index.nearest(centred_unit(features, self.reference.centre))
        scores = []
        for row, label in enumerate(labels):
            label_score = float(probabilities[row, self.classes.index(label)])
            real_similarity = float(np.clip(similarity[row], -1.0, 1.0))
            scores.append(
                QCScore(
                    label_score=label_score,
                    real_similarity=real_similarity,
                    nearest_real=self.reference.image_ids[int(nearest[row])],
                    reason=failure_reason(label_score, real_similarity, self.qc),
                )
            )
        return scores
