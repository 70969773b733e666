"""Near-duplicates: the pair search within a set, the nearest match between sets, bounded memory."""

from __future__ import annotations

import numpy as np
import pytest

from autocls.report.neardup import describe, directions, near_duplicates, nearest


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def with_copies() -> np.ndarray:
    """20 random directions (similarities near 0), then near copies of rows 4 and 9, then row 9 again."""
    rng = np.random.default_rng(0)
    base = unit(rng.normal(size=(20, 64)))
    return np.concatenate([base, unit(base[[4, 9]] + 0.01 * rng.normal(size=(2, 64))), base[[9]]]).astype(np.float32)


@pytest.mark.parametrize("block_elements", [1, 3 * 23, 2**24])
def test_pairs_within_one_set_are_found_once_most_similar_first(block_elements: int) -> None:
    pairs = near_duplicates(with_copies(), threshold=0.97, block_elements=block_elements)
    assert pairs.count == 4
    assert {(p.first, p.second) for p in pairs.closest} == {(4, 20), (9, 21), (9, 22), (21, 22)}
    similarities = [p.similarity for p in pairs.closest]
    assert similarities == sorted(similarities, reverse=True) and similarities[0] == pytest.approx(1.0, abs=1e-6)


def test_only_pairs_labelled_differently_and_only_the_top_are_kept() -> None:
    labels = np.array(["a"] * 21 + ["b", "a"])  # row 21 (the copy of 9) is filed under another class
    pairs = near_duplicates(with_copies(), labels, threshold=0.97)
    assert pairs.count == 2 and {(p.first, p.second) for p in pairs.closest} == {(9, 21), (21, 22)}
    many = near_duplicates(np.ones((300, 4), np.float32) / 2, top=5, block_elements=1000)  # 300 copies of one image
    assert many.count == 300 * 299 // 2 and len(many.closest) == 5


def test_each_query_gets_its_nearest_reference() -> None:
    rng = np.random.default_rng(1)
    train = unit(rng.normal(size=(30, 32))).astype(np.float32)
    evaluated = np.concatenate([unit(rng.normal(size=(5, 32))), train[[7]]]).astype(np.float32)
    matches = nearest(evaluated, train, block_elements=60)
    assert matches.index[5] == 7 and matches.similarity[5] == pytest.approx(1.0, abs=1e-6)
    assert (matches.similarity[:5] < 0.9).all()
    assert nearest(evaluated, train[:0]).similarity.max() < 0  # no training images: nothing matches


def test_thumbnails_tell_a_resized_copy_from_another_image() -> None:
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(2)
    images = torch.from_numpy(rng.integers(0, 256, size=(10, 3, 8, 8), dtype=np.uint8))
    images = F.interpolate(images.float(), size=64, mode="bilinear").round().to(torch.uint8)  # smooth pictures
    copy = F.interpolate(F.interpolate(images[:1].float(), size=70, mode="bilinear"), size=64, mode="area")
    features = describe(torch.cat([images, copy.round().to(torch.uint8)]))
    unit_rows = directions(features, features[:10].mean(axis=0))
    similar = unit_rows @ unit_rows.T
    assert similar[10, 0] >= 0.99 and similar[10, 1:10].max() < 0.9
