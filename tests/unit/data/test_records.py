"""JSONL dataset rows: the three SFT formats, preference pairs, RL prompts, and bad rows by file:line."""

import json

import pytest

from lazarus.data.records import (
    DatasetError,
    PreferenceRecord,
    SFTRecord,
    read_preference,
    read_prompts,
    read_sft,
)


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_read_sft_accepts_messages_prompt_completion_and_text_and_skips_blank_lines(tmp_path):
    # given: one row of each SFT format with a blank line between
    conversation = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    path = write_lines(tmp_path / "sft.jsonl", [
        json.dumps({"messages": conversation}),
        "",
        json.dumps({"prompt": "What is 1 + 1?", "completion": "2", "id": 7}),
        json.dumps({"prompt": [{"role": "user", "content": "q"}],
                    "completion": [{"role": "assistant", "content": "a"}]}),
        json.dumps({"text": "plain text"}),
    ])
    # when
    records = read_sft(path)
    # then
    assert records == [
        SFTRecord(messages=conversation),
        SFTRecord(prompt="What is 1 + 1?", completion="2"),
        SFTRecord(prompt=[{"role": "user", "content": "q"}], completion=[{"role": "assistant", "content": "a"}]),
        SFTRecord(text="plain text"),
    ]


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "a", "completion": ', "sft.jsonl:2: invalid JSON"),
    ('["not", "an", "object"]', "sft.jsonl:2: a row must be a JSON object"),
    ('{"prompt": "only a prompt"}', "sft.jsonl:2: missing field 'completion'"),
    ('{"prompt": "a", "completion": 3}', "sft.jsonl:2: field 'completion' must be a string or a list of messages"),
    ('{"text": ["x"]}', "sft.jsonl:2: field 'text' must be a string"),
    ('{"messages": [{"role": "user", "content": "q"}]}', "sft.jsonl:2: field 'messages' has no assistant message"),
    ('{"messages": [{"role": "robot", "content": "q"}]}', "sft.jsonl:2: field 'messages[0].role' must be one of"),
    ('{"messages": [{"role": "user", "content": 5}]}', "sft.jsonl:2: field 'messages[0].content' must be a string"),
    ('{"text": "a", "messages": []}', "sft.jsonl:2: an SFT row needs exactly one of"),
    ('{"id": 1}', "sft.jsonl:2: an SFT row needs exactly one of"),
])
def test_read_sft_names_file_line_and_field_of_a_bad_row(tmp_path, line, message):
    # given: a good first row and a bad second row
    path = write_lines(tmp_path / "sft.jsonl", ['{"text": "fine"}', line])
    # when / then
    with pytest.raises(DatasetError) as error:
        read_sft(path)
    assert str(error.value).startswith(f"{tmp_path}/{message}")


def test_read_preference_accepts_strings_and_conversations(tmp_path):
    # given
    path = write_lines(tmp_path / "pref.jsonl", [
        json.dumps({"prompt": "p", "chosen": "good", "rejected": "bad"}),
        json.dumps({"prompt": [{"role": "user", "content": "p"}],
                    "chosen": [{"role": "assistant", "content": "good"}],
                    "rejected": [{"role": "assistant", "content": "bad"}]}),
    ])
    # when
    records = read_preference(path)
    # then
    assert records[0] == PreferenceRecord("p", "good", "bad")
    assert records[1].chosen == [{"role": "assistant", "content": "good"}]


def test_read_preference_splits_trl_implicit_prompt_from_shared_leading_messages(tmp_path):
    # given: no prompt column; chosen and rejected share the user turn
    user = {"role": "user", "content": "What is 2 + 2?"}
    path = write_lines(tmp_path / "pref.jsonl", [json.dumps({
        "chosen": [user, {"role": "assistant", "content": "4"}],
        "rejected": [user, {"role": "assistant", "content": "5"}]})])
    # when
    (record,) = read_preference(path)
    # then
    assert record == PreferenceRecord([user], [{"role": "assistant", "content": "4"}],
                                      [{"role": "assistant", "content": "5"}])


@pytest.mark.parametrize("row, message", [
    ({"prompt": "p", "rejected": "bad"}, "pref.jsonl:1: missing field 'chosen'"),
    ({"prompt": "p", "chosen": {"x": 1}, "rejected": "bad"},
     "pref.jsonl:1: field 'chosen' must be a string or a list of messages"),
    ({"chosen": "good", "rejected": "bad"}, "pref.jsonl:1: missing field 'prompt'"),
])
def test_read_preference_names_file_line_and_field_of_a_bad_row(tmp_path, row, message):
    path = write_lines(tmp_path / "pref.jsonl", [json.dumps(row)])
    with pytest.raises(DatasetError, match=message):
        read_preference(path)


def test_read_prompts_keeps_every_other_column_for_reward_functions(tmp_path):
    # given
    path = write_lines(
        tmp_path / "rl.jsonl", [json.dumps({"prompt": "What is 3 + 4?", "answer": "7", "kind": "arithmetic"})]
    )
    # when
    (record,) = read_prompts(path)
    # then
    assert record.prompt == "What is 3 + 4?"
    assert record.columns == {"answer": "7", "kind": "arithmetic"}


def test_read_prompts_reports_a_row_without_prompt_by_line(tmp_path):
    path = write_lines(tmp_path / "rl.jsonl", ['{"prompt": "a"}', '{"prompt": "b"}', '{"question": "c"}'])
    with pytest.raises(DatasetError, match=r"rl.jsonl:3: missing field 'prompt'"):
        read_prompts(path)


def test_missing_and_empty_files_are_dataset_errors_naming_the_file(tmp_path):
    with pytest.raises(DatasetError, match="nope.jsonl: file not found"):
        read_sft(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DatasetError, match="empty.jsonl: no records"):
        read_prompts(tmp_path / "empty.jsonl")
