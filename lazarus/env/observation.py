"""Observations to token ids: the opening prompt with its tools, and what follows a model turn.

Each observation is tokenized exactly once and appended after the model's tokens, so earlier turns are
never re-tokenized. `continuation_ids` renders the new messages with the chat template after a stand-in
conversation and keeps the text after the assistant turn's EOS: the template's own separators, the
messages, and the next assistant header. Tools go through the template's `tools=` when it renders them,
else into a system message that lists their schemas and the call format. Tool output longer than the
budget is cut to `max_tokens` tokens with a visible marker.
"""

from __future__ import annotations

import json

from lazarus.errors import LazarusError

TRUNCATED = " …[truncated]"
TOOLS_SYSTEM_PROMPT = (
    "You can call these tools. To call one, reply with "
    '<tool_call>{{"name": <tool name>, "arguments": <arguments object>}}</tool_call>; '
    "the result comes back as a tool message.\nTools:\n{tools}"
)


class TemplateError(LazarusError):
    """The tokenizer's chat template cannot render an observation as a continuation."""


def truncate(text: str, tokenizer, max_tokens: int) -> str:
    """`text` cut to at most `max_tokens` tokens (plus the marker) when it is longer."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) <= max_tokens:
        return text
    return tokenizer.decode(ids[:max_tokens]) + TRUNCATED


def _has_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _render(tokenizer, messages, add_generation_prompt, tools=None) -> str:
    kwargs = {"tools": tools} if tools else {}
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                         **kwargs)


def tools_system_message(tools: list[dict]) -> dict:
    listing = "\n".join(json.dumps(t.get("function", t), ensure_ascii=False) for t in tools)
    return {"role": "system", "content": TOOLS_SYSTEM_PROMPT.format(tools=listing)}


def prompt_ids(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
    """Token ids of the opening conversation (with its tools), ready for the model's first turn."""
    if not _has_template(tokenizer):
        text = "".join(m["content"] + "\n" for m in ([tools_system_message(tools)] if tools else []) + messages)
        return tokenizer.encode(text, add_special_tokens=False)
    if tools:
        plain = _render(tokenizer, messages, True)
        with_tools = _render(tokenizer, messages, True, tools)
        if with_tools == plain:  # the template ignores tools=: describe them in a system message instead
            return tokenizer.encode(_render(tokenizer, [tools_system_message(tools)] + messages, True),
                                    add_special_tokens=False)
        return tokenizer.encode(with_tools, add_special_tokens=False)
    return tokenizer.encode(_render(tokenizer, messages, True), add_special_tokens=False)


def continuation_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids that follow a model turn ending in EOS: `messages` (tool results, user turns) and the next
    assistant header."""
    if not _has_template(tokenizer):
        return tokenizer.encode("\n" + "".join(m["content"] + "\n" for m in messages), add_special_tokens=False)
    eos = tokenizer.eos_token or ""
    stand_in = [{"role": "user", "content": "?"}, {"role": "assistant", "content": "."}]
    before = _render(tokenizer, stand_in, False)
    after = _render(tokenizer, stand_in + messages, True)
    end_of_turn = before.rfind(eos) + len(eos) if eos and eos in before else -1
    if end_of_turn < 0 or not after.startswith(before[:end_of_turn]):
        raise TemplateError("the chat template does not render tool messages as a continuation of the "
                            "assistant turn (or has no EOS after it); multi-turn rollout needs one that does")
    return tokenizer.encode(after[end_of_turn:], add_special_tokens=False)
