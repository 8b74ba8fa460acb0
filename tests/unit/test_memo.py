"""The memo behind the hot RPCs' answers: reused only while every input holds."""

from __future__ import annotations

import pytest

from gpuletd.services.memo import Memo


class Counting:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> list[int]:
        self.calls += 1
        return [self.calls]


def test_an_answer_is_reused_while_its_inputs_are_the_same_or_equal() -> None:
    memo: Memo[str, list[int]] = Memo(8)
    compute = Counting()
    first = memo.get("caption", ("registry", (1, 2)), compute)
    # An equal input (a new tuple of the same readings) is as good as the same object.
    assert memo.get("caption", ("registry", (1, 2)), compute) is first
    assert compute.calls == 1


def test_any_changed_input_computes_afresh() -> None:
    memo: Memo[str, list[int]] = Memo(8)
    compute = Counting()
    memo.get("caption", ("registry", "profile", (1, 2)), compute)
    assert memo.get("caption", ("registry", "profile", (1, 3)), compute) == [2]
    assert memo.get("caption", ("registry", "other", (1, 3)), compute) == [3]
    assert memo.get("caption", ("registry", "other", (1, 3)), compute) == [3]
    assert compute.calls == 3


def test_keys_are_answered_apart() -> None:
    memo: Memo[str, list[int]] = Memo(8)
    compute = Counting()
    assert memo.get("caption", (), compute) == [1]
    assert memo.get("embed", (), compute) == [2]
    assert memo.get("caption", (), compute) == [1]


def test_a_failed_computation_is_not_kept() -> None:
    memo: Memo[str, list[int]] = Memo(8)

    def refuse() -> list[int]:
        raise ValueError("unknown role")

    with pytest.raises(ValueError):
        memo.get("nope", (), refuse)
    assert len(memo) == 0
    assert memo.get("nope", (), Counting()) == [1]


def test_it_keeps_at_most_its_size_dropping_the_oldest_key() -> None:
    memo: Memo[int, list[int]] = Memo(2)
    compute = Counting()
    for key in (1, 2, 3):
        memo.get(key, (), compute)
    assert len(memo) == 2
    assert memo.get(3, (), compute) == [3]
    assert memo.get(1, (), compute) == [4]  # dropped, computed again
