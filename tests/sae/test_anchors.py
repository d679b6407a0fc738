"""Co-firing anchors (sae/anchors.py): counts, which atoms anchor which, and the held part."""
import math

import pytest
import torch

from unsuperpose.data.configs import ConfigError
from unsuperpose.sae.anchors import cofiring_counts, find_anchors, hold_anchor_parts
from unsuperpose.sae.mod import MOD


def test_cofiring_counts_by_hand():
    # rows use {0, 1}, {1, 2}, {0, 1, 2} and {2} (a zero code and an empty slot count nothing)
    idx = torch.tensor([[0, 1, -1], [1, 2, -1], [0, 1, 2], [2, 0, -1]])
    val = torch.tensor([[1.0, 2.0, 0.0], [0.5, 1.0, 0.0], [1.0, 1.0, 3.0], [4.0, 0.0, 0.0]])
    counts = cofiring_counts(idx, val, 4)
    expected = torch.tensor([[2, 2, 1, 0], [2, 3, 2, 0], [1, 2, 3, 0], [0, 0, 0, 0]],
                            dtype=torch.float64)
    assert torch.equal(counts, expected)


def _counts(usage: list[int], pairs: dict[tuple[int, int], int]) -> torch.Tensor:
    counts = torch.diag(torch.tensor(usage, dtype=torch.float64))
    for (i, j), n in pairs.items():
        counts[i, j] = counts[j, i] = n
    return counts


def test_a_parent_anchors_its_child_and_a_frequent_stranger_does_not():
    # 1000 rows: atom 0 a parent (100 rows), atom 1 its child (20 rows, all with the parent),
    # atom 2 a frequent atom (500 rows) beside the child in 10 of its 20 rows: half, as in
    # rows at large (lift 1 < 2); atom 3 rare (5 rows) beside the child in all 5
    counts = _counts([100, 20, 500, 5], {(0, 1): 20, (1, 2): 10, (1, 3): 5, (0, 2): 50})
    anchors, valid = find_anchors(counts, 1000, 0.5)
    assert anchors[1][valid[1]].tolist() == [0]
    assert not valid[0].any()       # the child is used less than the parent
    assert not valid[2].any()
    assert anchors[3][valid[3]].tolist() == [1]   # 5 of 5 rows, 20 x its base rate, 4 x the use
    # a higher share leaves out an anchor seen in too few of the atom's rows
    counts[0, 1] = counts[1, 0] = 12                                     # 0.6 of the child's
    assert find_anchors(counts, 1000, 0.5)[1][1].any()
    assert not find_anchors(counts, 1000, 0.7)[1][1].any()


def test_hold_gives_back_the_part_an_update_moved_onto_the_anchor():
    # the child's update absorbed 0.5 of its parent; held, it keeps the split it had
    parent, child, other = torch.eye(3, dtype=torch.float64)
    old = torch.stack([parent, child, other])
    new = torch.stack([parent, (child + 0.5 * parent) / math.sqrt(1.25), other])
    anchors = torch.tensor([[0], [0], [0]])
    valid = torch.tensor([[False], [True], [False]])
    held = hold_anchor_parts(new, old, anchors, valid)
    torch.testing.assert_close(held, old, atol=1e-5, rtol=0)
    # what the update did outside the anchors' span stays: the child moving towards `other`
    moved = (child + 0.5 * parent + 0.3 * other)
    new[1] = moved / moved.norm()
    held = hold_anchor_parts(new, old, anchors, valid)
    expected = (child + 0.3 * other) / math.sqrt(1.09)
    torch.testing.assert_close(held[1], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(held[[0, 2]], new[[0, 2]])   # no anchors: the update's atoms


def test_the_held_part_follows_an_atom_and_an_anchor_turned_around():
    # old child: 0.6 parent + 0.8 child; the update turns both atoms around and moves the
    # child onto the parent: held, the child is the old one turned around
    parent, child = torch.eye(2, dtype=torch.float64)
    old = torch.stack([parent, 0.6 * parent + 0.8 * child])
    new = torch.stack([-parent, -(0.9 * parent + math.sqrt(0.19) * child)])
    held = hold_anchor_parts(new, old, torch.tensor([[0], [0]]),
                             torch.tensor([[False], [True]]))
    torch.testing.assert_close(held[1], -old[1], atol=1e-5, rtol=0)


def test_anchor_share_is_validated():
    for bad in (0.0, 1.5, -0.2):
        with pytest.raises(ConfigError, match="^anchor_share: "):
            MOD(n_components=8, k=2, anchor_share=bad)
    MOD(n_components=8, k=2, anchor_share=1.0)
