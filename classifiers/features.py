"""Arithmetic on classifier features, numpy only (no torch), for curation and evaluation."""

from __future__ import annotations

import numpy as np


def centred_unit(features: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Features minus a centre, scaled to unit length: their inner products are centred
    cosines. CNN features after ReLU and pooling are all positive, so raw cosine similarity
    sits near 1 for any pair; centring on the real training mean makes it discriminate."""
    shifted = features - centre.reshape(1, -1)
    return shifted / np.maximum(np.linalg.norm(shifted, axis=1, keepdims=True), 1e-12)


class InnerProductIndex:
    """Exact nearest-neighbour search by inner product (faiss's flat index): on unit rows,
    the most similar reference row by cosine."""

    def __init__(self, reference: np.ndarray) -> None:
        import faiss

        self._index = faiss.IndexFlatIP(reference.shape[1])
        self._index.add(np.ascontiguousarray(reference, dtype=np.float32))

    def nearest(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each query row's largest inner product with a reference row, and that row."""
        similarity, where = self._index.search(np.ascontiguousarray(queries, dtype=np.float32), 1)
        return similarity[:, 0].astype(np.float64), where[:, 0]

    def within(self, queries: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
        """Every (query row, reference row, inner product) with the product above the
        threshold (faiss's exact range search)."""
        lims, similarity, where = self._index.range_search(
            np.ascontiguousarray(queries, dtype=np.float32), threshold
        )
        return [
            (q, int(where[n]), float(similarity[n]))
            for q in range(len(queries))
            for n in range(lims[q], lims[q + 1])
        ]
