"""Math reward functions (TRL signature) on plain and conversational completions, and their lookup."""

import pytest

from lazarus.env.rewards import accuracy_reward, format_reward, resolve_reward_function, strict_accuracy_reward


def test_accuracy_reward_scores_equivalent_final_answers_on_strings_and_message_lists():
    # given: the same three completions as strings and as TRL conversational completions
    texts = ["3/4 = 0.75\nAnswer: 0.75", "Answer: 1\nno wait\nAnswer: 19", "12 + 7 = 18\nAnswer: 18"]
    messages = [[{"role": "assistant", "content": t}] for t in texts]
    for completions in (texts, messages):
        # when
        rewards = accuracy_reward(["q1", "q2", "q3"], completions, answer=["3/4", "19", "19"], kind=["x"] * 3)
        # then
        assert rewards == [1.0, 1.0, 0.0]


def test_accuracy_reward_falls_back_to_the_last_number_and_the_strict_one_does_not():
    # given: correct answers written the way pretrained chat models write them, without an `Answer:` line
    completions = ["8 + 4 = 12.", "The answer is 70.", "I think it is 19"]
    answers = ["12", "70", "19"]
    # when / then: the default reward reads the last number; the strict one only marked answers
    assert accuracy_reward(["q"] * 3, completions, answer=answers) == [1.0, 1.0, 1.0]
    assert strict_accuracy_reward(["q"] * 3, completions, answer=answers) == [0.0, 1.0, 0.0]
    assert resolve_reward_function("accuracy_strict") is strict_accuracy_reward


def test_accuracy_reward_gives_zero_without_an_answer_and_needs_one_answer_per_completion():
    assert accuracy_reward(["q"], ["I think it is nineteen"], answer=["19"]) == [0.0]
    with pytest.raises(ValueError, match="2 completions but 1 answers"):
        accuracy_reward(["q", "q"], ["a", "b"], answer=["1"])


@pytest.mark.parametrize("completion, reward", [
    ("12 + 7 = 19\nAnswer: 19", 1.0),
    ("Answer: -3/4.\n", 1.0),
    ("Answer: 12.5", 1.0),
    ("The larger one is B\nAnswer: B", 1.0),
    ("Answer: 19\nand some more text", 0.0),  # the answer line must be last
    ("Answer: nineteen", 0.0),
    ("Answer:", 0.0),
    ("12 + 7 = 19", 0.0),
    ("the Answer: 19", 0.0),  # must be a line of its own
])
def test_format_reward_requires_a_final_well_formed_answer_line(completion, reward):
    assert format_reward(["q"], [completion]) == [reward]
    assert format_reward(["q"], [[{"role": "assistant", "content": completion}]]) == [reward]


def test_resolve_reward_function_finds_builtins_and_module_functions():
    assert resolve_reward_function("accuracy") is accuracy_reward
    assert resolve_reward_function("format") is format_reward
    assert resolve_reward_function("lazarus.env.rewards:format_reward") is format_reward


@pytest.mark.parametrize("spec, message", [
    ("nonsense", "reward function 'nonsense' is neither a built-in"),
    ("no_such_module_xyz:f", "reward function 'no_such_module_xyz:f': cannot import module"),
    ("lazarus.env.rewards:missing", "module 'lazarus.env.rewards' has no function 'missing'"),
    ("lazarus.env.rewards:BUILTIN_REWARDS", "has no function 'BUILTIN_REWARDS'"),
])
def test_resolve_reward_function_names_a_bad_spec(spec, message):
    with pytest.raises(ValueError, match=message):
        resolve_reward_function(spec)


# --- columns a reward function needs are checked when the dataset is loaded (issue 14, item 18) ------


def _prompt_file(tmp_path, rows):
    import json

    path = tmp_path / "rl.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_rows_without_the_column_a_reward_needs_are_refused_naming_column_file_and_line(tmp_path):
    import pytest

    from lazarus.data.records import read_prompts
    from lazarus.env.rewards import RewardColumnError, RewardFunction, accuracy_reward, check_reward_columns

    # given an RL dataset whose second row has no `answer`
    path = _prompt_file(tmp_path, [{"prompt": "1+1?", "answer": "2"}, {"prompt": "2+2?"},
                                   {"prompt": "3+3?", "answer": "6"}])
    rows = read_prompts(path)
    # when the accuracy reward's columns are checked, then it is refused naming column, file and line
    with pytest.raises(RewardColumnError,
                       match=r"rl.jsonl:2: reward function 'accuracy' needs column 'answer'.*1 of 3"):
        check_reward_columns([RewardFunction("accuracy", accuracy_reward)], rows, str(path))


def test_dataset_where_no_row_has_the_column_is_refused_before_any_reward_is_computed(tmp_path):
    import pytest

    from lazarus.data.records import read_prompts
    from lazarus.env.rewards import RewardColumnError, RewardFunction, accuracy_reward, check_reward_columns

    path = _prompt_file(tmp_path, [{"prompt": "1+1?"}, {"prompt": "2+2?"}])
    with pytest.raises(RewardColumnError, match="no row has it"):
        check_reward_columns([RewardFunction("accuracy", accuracy_reward)], read_prompts(path), str(path))


def test_rewards_that_need_no_column_and_complete_datasets_pass(tmp_path):
    from lazarus.data.records import read_prompts
    from lazarus.env.rewards import RewardFunction, accuracy_reward, check_reward_columns, format_reward

    def kwargs_only(prompts, completions, **kwargs):
        return [0.0] * len(completions)

    def optional_column(prompts, completions, hint=None, **kwargs):
        return [0.0] * len(completions)

    path = _prompt_file(tmp_path, [{"prompt": "1+1?", "answer": "2"}])
    rewards = [RewardFunction(n, f) for n, f in (("accuracy", accuracy_reward), ("format", format_reward),
                                                 ("kw", kwargs_only), ("opt", optional_column))]
    check_reward_columns(rewards, read_prompts(path), str(path))
