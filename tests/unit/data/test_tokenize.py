"""Tokenization on the real tiny-model tokenizer (ChatML template): loss masks, EOS, prompt prefixes."""

import pytest

from lazarus.data.records import PreferenceRecord, SFTRecord
from lazarus.data.tokenize import encode_preference, encode_prompt, encode_sft


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return tiny_model[1]


@pytest.fixture()
def plain_tokenizer(tiny_model_dir):
    """The same tokenizer as a bare Hugging Face tokenizer with no chat template."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    hf.chat_template = None
    return hf


def targets(example):
    return [i for i, m in zip(example.input_ids, example.loss_mask) if m]


def test_prompt_completion_masks_the_prompt_and_targets_the_completion_through_eos(tokenizer):
    # given
    record = SFTRecord(prompt="What is 12 + 7?", completion="12 + 7 = 19\nAnswer: 19")
    # when
    example = encode_sft(record, tokenizer)
    # then: the masked part is exactly the generation prompt, the targets are completion + <|im_end|>
    prompt_ids = encode_prompt("What is 12 + 7?", tokenizer)
    n = len(prompt_ids)
    assert example.input_ids[:n] == prompt_ids
    assert example.loss_mask == [0] * n + [1] * (len(example.input_ids) - n)
    assert tokenizer.decode(targets(example)) == "12 + 7 = 19\nAnswer: 19<|im_end|>"
    assert example.input_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(prompt_ids) == "<|im_start|>user\nWhat is 12 + 7?<|im_end|>\n<|im_start|>assistant\n"


def test_conversation_targets_every_assistant_turn_and_masks_system_and_user(tokenizer):
    # given: two assistant turns
    record = SFTRecord(messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3 + 3?"},
        {"role": "assistant", "content": "6"},
    ])
    # when
    example = encode_sft(record, tokenizer)
    # then: the targets are the two answers with their end-of-turn tokens; the text is the template's
    assert tokenizer.decode(targets(example)) == "4<|im_end|>6<|im_end|>"
    full = tokenizer.apply_chat_template(record.messages, tokenize=False)
    assert tokenizer.decode(example.input_ids) == full.removesuffix("\n")  # ends at the last EOS
    # and the masked stretch between the turns is the second user turn
    first_target_end = example.loss_mask.index(0, example.loss_mask.index(1))
    second_target = example.loss_mask.index(1, first_target_end)
    assert tokenizer.decode(example.input_ids[first_target_end:second_target]) == \
        "\n<|im_start|>user\nAnd 3 + 3?<|im_end|>\n<|im_start|>assistant\n"


def test_mask_prompt_false_targets_every_token(tokenizer):
    example = encode_sft(SFTRecord(prompt="What is 1 + 1?", completion="2"), tokenizer, mask_prompt=False)
    assert example.loss_mask == [1] * len(example.input_ids)


def test_text_record_is_fully_targeted_and_ends_with_eos(tokenizer):
    example = encode_sft(SFTRecord(text="the sum of apples"), tokenizer)
    assert example.loss_mask == [1] * len(example.input_ids)
    assert example.input_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(example.input_ids) == "the sum of apples<|im_end|>"


def test_max_length_truncates_ids_and_mask_together(tokenizer):
    full = encode_sft(SFTRecord(prompt="What is 12 + 7?", completion="12 + 7 = 19\nAnswer: 19"), tokenizer)
    short = encode_sft(SFTRecord(prompt="What is 12 + 7?", completion="12 + 7 = 19\nAnswer: 19"), tokenizer,
                       max_length=10)
    assert short.input_ids == full.input_ids[:10] and short.loss_mask == full.loss_mask[:10]


def test_without_chat_template_falls_back_to_plain_concatenation(tokenizer, plain_tokenizer):
    # given: a tokenizer without a chat template, and the wrapped one told not to use its template
    record = SFTRecord(prompt="What is 12 + 7?", completion="19")
    for tok, kwargs in ((plain_tokenizer, {}), (tokenizer, {"use_chat_template": False})):
        # when
        example = encode_sft(record, tok, **kwargs)
        prompt_ids = encode_prompt("What is 12 + 7?", tok, **kwargs)
        # then: prompt line + newline (masked), completion + EOS (targets)
        assert prompt_ids == tok.encode("What is 12 + 7?\n", add_special_tokens=False)
        assert example.input_ids == prompt_ids + tok.encode("19", add_special_tokens=False) + [tok.eos_token_id]
        assert example.loss_mask == [0] * len(prompt_ids) + [1] * (len(example.input_ids) - len(prompt_ids))


def test_preference_completions_are_completion_tokens_only_ending_with_eos(tokenizer):
    # given
    record = PreferenceRecord("What is 3 + 4?", "3 + 4 = 7\nAnswer: 7", "3 + 4 = 8\nAnswer: 8")
    # when
    pair = encode_preference(record, tokenizer)
    # then
    assert pair.prompt_ids == encode_prompt("What is 3 + 4?", tokenizer)
    assert tokenizer.decode(pair.chosen_ids) == "3 + 4 = 7\nAnswer: 7<|im_end|>"
    assert tokenizer.decode(pair.rejected_ids) == "3 + 4 = 8\nAnswer: 8<|im_end|>"
    # and prompt + chosen is exactly the SFT encoding of the same pair
    sft = encode_sft(SFTRecord(prompt=record.prompt, completion=record.chosen), tokenizer)
    assert pair.prompt_ids + pair.chosen_ids == sft.input_ids


def test_preference_accepts_conversational_rows_and_fits_max_length(tokenizer):
    record = PreferenceRecord([{"role": "user", "content": "Which is larger? A: 3 or B: 5."}],
                              [{"role": "assistant", "content": "Answer: B"}],
                              [{"role": "assistant", "content": "Answer: A"}])
    pair = encode_preference(record, tokenizer, max_length=len(encode_prompt(record.prompt, tokenizer)) + 3)
    assert len(pair.chosen_ids) == 3 and len(pair.rejected_ids) == 3
    with pytest.raises(ValueError, match="max_length=2 leaves no room"):
        encode_preference(record, tokenizer, max_length=2)
