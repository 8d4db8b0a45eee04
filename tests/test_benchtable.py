"""bench/run.py's table: how a row's ratio and its verdict against the target are worked out.

No timing is measured here; the rows are made by hand.
"""
from __future__ import annotations

import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))

from run import Row  # noqa: E402


def row(target: str, gapshape: list[float], baseline: list[float] | None = None) -> Row:
    return Row("key", "label", "unit", gapshape, baseline or [], "baseline", target)


@pytest.mark.parametrize(("target", "gapshape", "baseline", "met"), [
    (">= 3 x", [7.0, 8.0, 9.0], [2.0, 2.0, 2.0], True),
    (">= 3 x", [5.0, 5.0, 5.0], [2.0, 2.0, 2.0], False),
    ("<= 1.2 x", [1.01], [1.0], True),
    ("<= 1.2 x", [1.27], [1.0], False),
    ("<= 32 KiB", [30.2], [20.3], True),
    ("<= 32 KiB", [33.3], [20.3], False),
    ("< 1 MiB/min", [0.514], None, True),
    ("< 1 MiB/min", [1.0], None, False),
    ("< 2 s", [0.14], [0.14], True),
    ("< 2 s", [3.92], [0.14], False),
])
def test_a_target_is_judged_on_the_ratio_or_the_value_its_unit_names(target, gapshape, baseline,
                                                                      met):
    assert row(target, gapshape, baseline).met is met


def test_a_row_without_a_target_has_no_verdict():
    assert row("", [1.0], [1.0]).met is None
    assert row("<= 1.2 x", [1.0]).met is None  # a ratio target with no baseline measured


def test_paired_runs_give_the_median_of_their_ratios_not_the_ratio_of_medians():
    # Pairs measured back to back: 2/1, 3/3, 8/2 -> ratios 2, 1, 4 -> median 2;
    # the medians alone (3 / 2) would say 1.5.
    paired = row("", [2.0, 3.0, 8.0], [1.0, 3.0, 2.0])
    assert paired.ratio == 2.0
    assert row("", [2.0, 3.0], [1.0]).ratio == 2.5  # unpaired: the ratio of the medians
