"""The SmolLM2 demo reads its held-out completions with both math extractors: the headline reward and the
other one, so a gain that comes only from marking answers (or only from the last number) is visible."""

import pytest

from lazarus.runtime.demo_smollm2 import rescore


def test_given_marked_and_unmarked_right_answers_when_rescored_then_strict_counts_only_the_marked_ones():
    # given: the shape `run_eval` returns; a marked right answer, an unmarked right one, a marked wrong one
    result = {"prompts": ["What is 3 + 4?"] * 3, "completions": ["Answer: 7", "3 + 4 = 7", "Answer: 8"],
              "answers": ["7", "7", "7"]}
    # when / then
    assert rescore(result, "accuracy") == pytest.approx(2 / 3)
    assert rescore(result, "accuracy_strict") == pytest.approx(1 / 3)
