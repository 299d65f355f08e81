"""fastvit.data: packing images of mixed sizes by token budget, and cu_seqlens of a packed batch."""
from __future__ import annotations

import itertools
import random

import pytest
import torch

from fastvit.data import cu_seqlens_for, image_tokens, pack_by_tokens


def _images(sides, C=3):
    """Tensors of shape (C, H, W); pack_by_tokens reads only their shapes, so expand() saves memory."""
    return [torch.empty(()).expand(C, h, w) for h, w in sides]


def _check_partition(batches, tokens, budget):
    flat = sorted(itertools.chain.from_iterable(batches))
    assert flat == list(range(len(tokens))), "every index exactly once"
    for b in batches:
        assert b == sorted(b) and b
        total = sum(tokens[i] for i in b)
        assert total <= budget or len(b) == 1, (b, total)


def test_tokens_count_patches_and_prefix():
    imgs = _images([(32, 48), (16, 16), (224, 224)])
    assert image_tokens(imgs, 16) == [7, 2, 197]
    assert image_tokens(imgs, 16, prefix_tokens=5) == [11, 6, 201]
    assert image_tokens(imgs, 16, prefix_tokens=0) == [6, 1, 196]


@pytest.mark.parametrize("order", ["ffd", "preserve"])
def test_random_mixes_partition_within_the_budget(order):
    rng = random.Random(0)
    for _ in range(20):
        sides = [(16 * rng.randint(1, 24), 16 * rng.randint(1, 24)) for _ in range(rng.randint(1, 60))]
        imgs = _images(sides)
        budget = rng.choice([200, 577, 1000, 4096])
        tokens = image_tokens(imgs, 16)
        batches = pack_by_tokens(imgs, budget, 16, order=order)
        _check_partition(batches, tokens, budget)
        if order == "preserve":
            # Runs of consecutive indices, each closed only when the next image would not fit.
            assert list(itertools.chain.from_iterable(batches)) == list(range(len(imgs)))
            for b, nxt in zip(batches, batches[1:]):
                assert sum(tokens[i] for i in b) + tokens[nxt[0]] > budget
        else:
            # First fit: a later batch's first image did not fit an earlier batch, so any two batches
            # together exceed the budget (oversized images aside, alone in theirs).
            loads = [sum(tokens[i] for i in b) for b in batches]
            assert sum(load > budget for load in loads) == sum(t > budget for t in tokens)
            assert all(x + y > budget for x, y in itertools.combinations(loads, 2))


def test_ffd_beats_next_fit_on_a_known_case():
    # Tokens 7, 4, 6, 3, budget 10: next fit [7], [4, 6], [3] = 3 batches; FFD [7, 3], [6, 4] = 2.
    imgs = _images([(16, 16 * 6), (16, 16 * 3), (16, 16 * 5), (16, 16 * 2)])  # 7, 4, 6, 3 tokens with prefix 1
    assert image_tokens(imgs, 16) == [7, 4, 6, 3]
    assert pack_by_tokens(imgs, 10, 16, order="preserve") == [[0], [1, 2], [3]]
    assert pack_by_tokens(imgs, 10, 16) == [[0, 3], [1, 2]]


def test_image_larger_than_the_budget_gets_its_own_batch():
    imgs = _images([(16, 16), (64, 64), (16, 32)])  # 2, 17, 3 tokens
    assert pack_by_tokens(imgs, 10, 16) == [[1], [0, 2]]
    assert pack_by_tokens(imgs, 10, 16, order="preserve") == [[0], [1], [2]]


def test_deterministic_and_empty():
    imgs = _images([(32, 32)] * 5)
    assert pack_by_tokens(imgs, 10, 16) == pack_by_tokens(imgs, 10, 16) == [[0, 1], [2, 3], [4]]
    assert pack_by_tokens([], 10, 16) == []


def test_cu_seqlens_of_a_batch():
    imgs = _images([(32, 48), (16, 16), (224, 224)])
    cu, max_seqlen = cu_seqlens_for(imgs, 16)
    assert cu.dtype == torch.int32 and cu.tolist() == [0, 7, 9, 206] and max_seqlen == 197
    with pytest.raises(ValueError, match="at least one image"):
        cu_seqlens_for([], 16)


@pytest.mark.parametrize("call,match", [
    (lambda: pack_by_tokens(_images([(32, 32), (32, 40)]), 100, 16), r"images\[1\] has size 32 x 40"),
    (lambda: pack_by_tokens(_images([(32, 32), (0, 32)]), 100, 16), r"images\[1\] has size 0 x 32"),
    (lambda: pack_by_tokens([torch.empty(32, 32)], 100, 16), r"images\[0\] must be a \(C, H, W\)"),
    (lambda: pack_by_tokens(_images([(32, 32)]), 0, 16), "token_budget must be a positive int"),
    (lambda: pack_by_tokens(_images([(32, 32)]), 10.5, 16), "token_budget must be a positive int"),
    (lambda: pack_by_tokens(_images([(32, 32)]), 100, 0), "patch_size must be a positive int"),
    (lambda: pack_by_tokens(_images([(32, 32)]), 100, 16, prefix_tokens=-1), "prefix_tokens must be an int >= 0"),
    (lambda: pack_by_tokens(_images([(32, 32)]), 100, 16, order="random"), "order must be one of 'ffd', 'preserve'"),
])
def test_bad_arguments_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()
