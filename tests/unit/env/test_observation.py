"""Observations to token ids: tools through the template's `tools=` or a system message, continuations
that match the template's own rendering of the whole conversation, truncation to a token budget."""

import copy

from lazarus.env.observation import TRUNCATED, continuation_ids, prompt_ids, truncate
from lazarus.env.tools.calculator import calculator

TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTOOLS:{% for t in tools %} {{ t['function']['name'] }}{% endfor %}<|im_end|>\n"
    "{% endif %}{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_tools_go_into_a_system_message_when_the_template_ignores_them(tiny_model):
    _, tokenizer = tiny_model
    ids = prompt_ids(tokenizer, [{"role": "user", "content": "What is 2 * 3?"}], [calculator.schema()])
    text = tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\nYou can call these tools.") and '"name": "calculator"' in text
    assert text.endswith("<|im_start|>user\nWhat is 2 * 3?<|im_end|>\n<|im_start|>assistant\n")


def test_tools_go_through_the_template_when_it_renders_them(tiny_model):
    _, tokenizer = tiny_model
    tokenizer = copy.copy(tokenizer)
    tokenizer._tokenizer = copy.copy(tokenizer._tokenizer)
    tokenizer._tokenizer.chat_template = TOOLS_TEMPLATE
    ids = prompt_ids(tokenizer, [{"role": "user", "content": "hi"}], [calculator.schema()])
    assert tokenizer.decode(ids).startswith("<|im_start|>system\nTOOLS: calculator<|im_end|>")


def test_continuation_after_an_assistant_turn_equals_the_templates_rendering_of_the_conversation(tiny_model):
    # given a conversation whose assistant turn the model produced (ending in EOS)
    _, tokenizer = tiny_model
    user = [{"role": "user", "content": "What is 347 * 29?"}]
    call = '<tool_call>{"name": "calculator", "arguments": {"expression": "347 * 29"}}</tool_call>'
    model_turn = tokenizer.encode(call, add_special_tokens=False) + [tokenizer.eos_token_id]
    # when the tool's answer is appended as its own ids
    tool = [{"role": "tool", "content": "10063"}]
    episode = prompt_ids(tokenizer, user) + model_turn + continuation_ids(tokenizer, tool)
    # then the text is what the chat template renders for the whole conversation, ready for the next turn
    whole = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": call},
                                                  {"role": "tool", "content": "10063"}],
                                          tokenize=False, add_generation_prompt=True)
    assert tokenizer.decode(episode) == whole


def test_truncate_cuts_long_observations_to_the_token_budget(tiny_model):
    _, tokenizer = tiny_model
    long_text = "1234567890" * 20
    cut = truncate(long_text, tokenizer, 16)
    assert cut.endswith(TRUNCATED)
    assert len(tokenizer.encode(cut.removesuffix(TRUNCATED), add_special_tokens=False)) <= 16
    assert truncate("short", tokenizer, 16) == "short"
