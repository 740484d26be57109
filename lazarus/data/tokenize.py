"""Records to token ids: the tokenizer's chat template, loss masks, and prompt/completion splits.

A conversation is rendered with the chat template and cut into *segments*: the text before each
assistant turn (masked) and each assistant turn up to and including its end-of-turn token (a target).
Each segment is tokenized on its own, so the prompt tokens of an SFT example are exactly
`encode_prompt(prompt)` — the same ids the inference engine is given at generation time.
The text after the final assistant turn's end token (ChatML's trailing newline) is dropped, so every
example ends with EOS.

Tokenizers without a chat template (or `use_chat_template=False`) fall back to plain concatenation:
each non-assistant message is its content followed by a newline, each assistant message is its
content followed by the EOS token. A string prompt is one user message, a string completion one
assistant message, in both modes.

`tokenizer` is mlx-lm's `TokenizerWrapper` (or a Hugging Face tokenizer): it must have `encode`,
`eos_token_id`, and `apply_chat_template` / `chat_template` to use a template.

Work per row is bounded by `max_length`: no token covers more characters than the longest vocabulary
entry, so each text is cut to `max_length` times that many characters before it is tokenized (a 50 MB
row costs what its first tokens cost, not 18 GB of tokenizer memory). The kept tokens are the same.

Text that spells a special token (`<|im_end|>`) is tokenized as that control token;
`check_special_tokens` finds such rows and, per `data.special_tokens_in_text`, refuses, warns or allows.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from lazarus.data.records import DatasetError, PreferenceRecord, PromptRecord, Prompt, SFTRecord


@dataclass
class TokenizedExample:
    input_ids: list[int]
    loss_mask: list[int]  # aligned with input_ids: 1 where the token is a target to predict


@dataclass
class TokenizedPreference:
    prompt_ids: list[int]
    chosen_ids: list[int]  # completion tokens only, ending with EOS
    rejected_ids: list[int]


def encode_sft(record: SFTRecord, tokenizer, *, mask_prompt: bool = True, max_length: int | None = None,
               use_chat_template: bool = True) -> TokenizedExample:
    """Token ids and loss mask of one SFT record, truncated to `max_length` tokens.

    Conversations and prompt-completion pairs: assistant turns (with their EOS) are targets; the rest
    is masked when `mask_prompt`, else everything is a target. `text`: every token is a target.
    """
    budget = char_budget(tokenizer, max_length)
    if record.text is not None:
        ids = tokenizer.encode(_cut(record.text, budget)) + [_eos_id(tokenizer)]
        mask = [1] * len(ids)
    else:
        messages = (record.messages if record.messages is not None
                    else as_messages(record.prompt, "user") + as_messages(record.completion, "assistant"))
        messages = _cut_messages(messages, budget)
        ids, mask = [], []
        for segment_ids, is_target in _segments(messages, tokenizer, use_chat_template):
            ids += segment_ids
            mask += [1 if (is_target or not mask_prompt) else 0] * len(segment_ids)
    if max_length is not None:
        ids, mask = ids[:max_length], mask[:max_length]
    return TokenizedExample(ids, mask)


def encode_prompt(prompt: Prompt, tokenizer, *, use_chat_template: bool = True) -> list[int]:
    """Token ids of a prompt, ready for generation (the template's assistant header appended)."""
    messages = as_messages(prompt, "user")
    segments = _segments(messages, tokenizer, use_chat_template, add_generation_prompt=True)
    return [i for segment_ids, _ in segments for i in segment_ids]


def encode_preference(record: PreferenceRecord, tokenizer, *, max_length: int | None = None,
                      max_prompt_length: int | None = None,
                      use_chat_template: bool = True) -> TokenizedPreference:
    """Prompt ids and the chosen/rejected completion ids (each ending with EOS).

    With `max_prompt_length` the prompt keeps its last tokens; with `max_length` each completion is
    cut so that prompt + completion fits.
    """
    budget = char_budget(tokenizer, None if max_length is None and max_prompt_length is None
                         else max((max_length or 0), (max_prompt_length or 0)))
    prompt_messages = _cut_messages(as_messages(record.prompt, "user"), budget, keep_end=max_prompt_length is not None)
    prompt_ids = encode_prompt(prompt_messages, tokenizer, use_chat_template=use_chat_template)
    completions = []
    for name, completion in (("chosen", record.chosen), ("rejected", record.rejected)):
        completion_messages = _cut_messages(as_messages(completion, "assistant"), budget)
        if completion_messages[0]["role"] != "assistant":
            raise ValueError(f"{name} must start with an assistant message, "
                             f"not {completion_messages[0]['role']!r}")
        segments = _segments(prompt_messages + completion_messages, tokenizer, use_chat_template)
        ids = [i for segment_ids, _ in segments for i in segment_ids]
        if ids[: len(prompt_ids)] != prompt_ids:  # cannot happen for templates that pass _segments' check
            raise ValueError(f"the prompt does not tokenize as a prefix of prompt + {name}")
        completions.append(ids[len(prompt_ids):])
    if max_prompt_length is not None:
        prompt_ids = prompt_ids[-max_prompt_length:]
    if max_length is not None:
        room = max_length - len(prompt_ids)
        if room < 1:
            raise ValueError(f"max_length={max_length} leaves no room for a completion after a "
                             f"{len(prompt_ids)}-token prompt (set max_prompt_length)")
        completions = [c[:room] for c in completions]
    return TokenizedPreference(prompt_ids, completions[0], completions[1])


def char_budget(tokenizer, max_tokens: int | None) -> int | None:
    """Characters that can hold at most `max_tokens` tokens: `max_tokens` x the longest vocabulary entry."""
    if max_tokens is None:
        return None
    return max_tokens * max_token_chars(tokenizer) + 1


def max_token_chars(tokenizer) -> int:
    """The most characters one token can stand for (the longest vocabulary entry), cached on the tokenizer."""
    cached = getattr(tokenizer, "_lazarus_max_token_chars", None)
    if cached is None:
        try:
            cached = max(map(len, tokenizer.get_vocab()))
        except (AttributeError, TypeError, ValueError):
            cached = 256  # no vocabulary to read: a generous bound (still bounded work)
        try:
            tokenizer._lazarus_max_token_chars = cached
        except AttributeError:
            pass
    return cached


def _cut(text: str, budget: int | None, keep_end: bool = False) -> str:
    if budget is None or len(text) <= budget:
        return text
    return text[-budget:] if keep_end else text[:budget]


def _cut_messages(messages: list[dict], budget: int | None, keep_end: bool = False) -> list[dict]:
    if budget is None:
        return messages
    return [m if len(m["content"]) <= budget else {**m, "content": _cut(m["content"], budget, keep_end)}
            for m in messages]


def special_tokens(tokenizer) -> list[str]:
    """The special tokens' texts (BOS/EOS/pad and the chat template's markers such as `<|im_start|>`)."""
    texts = set(getattr(tokenizer, "all_special_tokens", None) or [])
    for token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(token, "special", False):
            texts.add(str(token.content))
    return sorted((t for t in texts if t), key=len, reverse=True)


def _record_texts(record) -> list[str]:
    if isinstance(record, SFTRecord):
        parts = [record.text] if record.text is not None else (
            record.messages if record.messages is not None else [record.prompt, record.completion])
    elif isinstance(record, PreferenceRecord):
        parts = [record.prompt, record.chosen, record.rejected]
    elif isinstance(record, PromptRecord):
        parts = [record.prompt]
    else:
        raise TypeError(f"not a dataset record: {type(record).__name__}")
    texts = []
    for part in parts:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict):
            texts.append(part["content"])
        elif isinstance(part, list):
            texts += [m["content"] for m in part]
    return texts


def check_special_tokens(records: Sequence, tokenizer, policy: str, source: str) -> int:
    """Rows of `records` whose text spells a special token; per `policy` (`data.special_tokens_in_text`):

    error: raise `DatasetError` naming the first such row and token; warn: one warning with the count and
    an example; allow: nothing. Returns the number of such rows.
    """
    if policy not in ("error", "warn", "allow"):
        raise ValueError(f"data.special_tokens_in_text must be error, warn or allow, got {policy!r}")
    if policy == "allow":
        return 0
    tokens = special_tokens(tokenizer)
    if not tokens:
        return 0
    count, first = 0, None
    for i, record in enumerate(records):
        found = next((t for text in _record_texts(record) for t in tokens if t in text), None)
        if found is None:
            continue
        count += 1
        if first is None:
            first = (getattr(record, "where", "") or f"{source}: row {i + 1}", found)
        if policy == "error":
            raise DatasetError(f"{first[0]}: text contains the special token {found!r}, which would be "
                               "tokenized as that control token (set data.special_tokens_in_text=allow to keep it)")
    if count:
        warnings.warn(f"{source}: {count} of {len(records)} rows contain special-token text (first: {first[0]}, "
                      f"{first[1]!r}); it is tokenized as the control token. data.special_tokens_in_text: error "
                      "refuses such rows, allow silences this", stacklevel=2)
    return count


def as_messages(prompt: Prompt, role: str) -> list[dict]:
    """A string becomes one message with `role`; a message list is returned as is."""
    return [{"role": role, "content": prompt}] if isinstance(prompt, str) else list(prompt)


def _segments(messages: list[dict], tokenizer, use_chat_template: bool,
              add_generation_prompt: bool = False) -> list[tuple[list[int], bool]]:
    """(token ids, is_target) pieces of a conversation: masked text, then each assistant turn."""
    if _uses_template(tokenizer, use_chat_template):
        return _template_segments(messages, tokenizer, add_generation_prompt)
    return _plain_segments(messages, tokenizer)


def _template_segments(messages: list[dict], tokenizer, add_generation_prompt: bool):
    def render(conversation, generation_prompt=False):
        return tokenizer.apply_chat_template(conversation, tokenize=False,
                                             add_generation_prompt=generation_prompt)

    eos = tokenizer.eos_token or ""
    full = render(messages, add_generation_prompt)
    pieces: list[tuple[str, bool]] = []
    position = 0  # characters of `full` already assigned to a piece
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(messages[:i], True) if i else _render_nothing(render)
        through = render(messages[: i + 1])
        if not (full.startswith(through) and through.startswith(before) and len(before) >= position):
            raise ValueError("the tokenizer's chat template does not render a conversation as a prefix of "
                             "its continuation, so assistant turns cannot be located; use "
                             "use_chat_template=False")
        # The turn is the assistant content then the template's end-of-turn text; the target stops
        # at the first EOS after the content (ChatML's newline after <|im_end|> is not a target).
        turn = through[len(before):]
        content_end = turn.find(message["content"]) + len(message["content"])
        eos_at = turn.find(eos, content_end) if eos else -1
        target = turn[: eos_at + len(eos)] if eos_at >= 0 else turn
        pieces += [(full[position:len(before)], False), (target, True)]
        position = len(before) + len(target)
    if messages[-1]["role"] != "assistant":
        pieces.append((full[position:], False))
    segments = [(tokenizer.encode(text, add_special_tokens=False), is_target)
                for text, is_target in pieces if text]
    if messages[-1]["role"] == "assistant" and segments[-1][0][-1:] != [_eos_id(tokenizer)]:
        segments[-1] = (segments[-1][0] + [_eos_id(tokenizer)], True)
    return segments


def _render_nothing(render) -> str:
    # A conversation that opens with an assistant turn: the text before it is what the template
    # renders for no messages (a BOS, a default system prompt), or nothing if it cannot render that.
    from jinja2 import TemplateError

    try:
        return render([], True)
    except (TemplateError, IndexError, KeyError, TypeError, ValueError):  # templates often read messages[0]
        return ""


def _plain_segments(messages: list[dict], tokenizer) -> list[tuple[list[int], bool]]:
    segments: list[tuple[list[int], bool]] = []
    for message in messages:
        if message["role"] == "assistant":
            segments.append((tokenizer.encode(message["content"], add_special_tokens=False)
                             + [_eos_id(tokenizer)], True))
        else:
            ids = tokenizer.encode(message["content"] + "\n", add_special_tokens=False)
            if segments and not segments[-1][1]:
                segments[-1] = (segments[-1][0] + ids, False)
            else:
                segments.append((ids, False))
    return segments


def _uses_template(tokenizer, use_chat_template: bool) -> bool:
    return use_chat_template and bool(getattr(tokenizer, "chat_template", None))


def _eos_id(tokenizer) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ValueError("the tokenizer has no eos_token_id; set one in its tokenizer_config.json")
    return int(eos)
