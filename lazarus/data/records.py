"""Typed rows of the JSONL dataset formats users already have (the columns TRL uses).

- SFT: `messages` (a conversation), `prompt` + `completion` (each a string or a list of messages),
  or `text` (plain language modelling).
- Preference: `prompt` / `chosen` / `rejected`, strings or message lists; TRL's implicit-prompt form
  (no `prompt`, `chosen` and `rejected` are whole conversations sharing a prefix) is accepted too.
- RL prompts: `prompt` plus any other columns, which reward functions receive as keyword arguments.

A bad row raises `DatasetError` naming the file, the 1-based line and the field.
"""

from __future__ import annotations

from lazarus.errors import LazarusError
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

Prompt = str | list[dict]

ROLES = ("system", "user", "assistant", "tool")


class DatasetError(LazarusError, ValueError):
    """A dataset row (or file) that cannot be used; the message says `file:line: field ...`."""


@dataclass
class SFTRecord:
    """Exactly one of: `messages`; `prompt` and `completion`; `text`."""

    messages: list[dict] | None = None
    prompt: Prompt | None = None
    completion: Prompt | None = None
    text: str | None = None
    where: str = field(default="", compare=False)  # "file:line" the row came from


@dataclass
class PreferenceRecord:
    prompt: Prompt
    chosen: Prompt
    rejected: Prompt
    where: str = field(default="", compare=False)  # "file:line" the row came from


@dataclass
class PromptRecord:
    prompt: Prompt
    columns: dict[str, Any] = field(default_factory=dict)  # every other key of the row
    where: str = field(default="", compare=False)  # "file:line" the row came from


def read_sft(path: str | Path) -> list[SFTRecord]:
    return _read_jsonl(path, _sft_record)


def read_preference(path: str | Path) -> list[PreferenceRecord]:
    return _read_jsonl(path, _preference_record)


def read_prompts(path: str | Path) -> list[PromptRecord]:
    return _read_jsonl(path, _prompt_record)


R = TypeVar("R")


def _read_jsonl(path: str | Path, make_record: Callable[[dict, str], R]) -> list[R]:
    """Parse every non-blank line of `path` with `make_record(row, where)`; `where` is "file:line"."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read: {e}") from None
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise DatasetError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
        record = make_record(row, where)
        record.where = where
        records.append(record)
    if not records:
        raise DatasetError(f"{path}: no records (the file is empty)")
    return records


def _sft_record(row: dict, where: str) -> SFTRecord:
    forms = (("messages", ("messages",)), ("prompt+completion", ("prompt", "completion")),
             ("text", ("text",)))
    formats = [name for name, keys in forms if any(k in row for k in keys)]
    if len(formats) != 1:
        found = ", ".join(formats) if formats else "none"
        raise DatasetError(f"{where}: an SFT row needs exactly one of the fields 'messages', "
                           f"'prompt'+'completion' or 'text' (found: {found})")
    if formats[0] == "messages":
        messages = _messages(row["messages"], where, "messages")
        if not any(m["role"] == "assistant" for m in messages):
            raise DatasetError(f"{where}: field 'messages' has no assistant message to learn from")
        return SFTRecord(messages=messages)
    if formats[0] == "text":
        return SFTRecord(text=_string(row["text"], where, "text"))
    for name in ("prompt", "completion"):
        if name not in row:
            raise DatasetError(f"{where}: missing field {name!r} (a prompt-completion row needs both)")
    return SFTRecord(prompt=_prompt(row["prompt"], where, "prompt"),
                     completion=_prompt(row["completion"], where, "completion"))


def _preference_record(row: dict, where: str) -> PreferenceRecord:
    for name in ("chosen", "rejected"):
        if name not in row:
            raise DatasetError(f"{where}: missing field {name!r}")
    chosen = _prompt(row["chosen"], where, "chosen")
    rejected = _prompt(row["rejected"], where, "rejected")
    if "prompt" in row:
        return PreferenceRecord(_prompt(row["prompt"], where, "prompt"), chosen, rejected)
    # TRL's implicit prompt: the shared leading messages of chosen and rejected are the prompt.
    if not (isinstance(chosen, list) and isinstance(rejected, list)):
        raise DatasetError(f"{where}: missing field 'prompt' (without it, 'chosen' and 'rejected' must be "
                           f"conversations that share their leading messages)")
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0 or shared == len(chosen) or shared == len(rejected):
        raise DatasetError(f"{where}: missing field 'prompt' and 'chosen'/'rejected' do not share a leading "
                           f"prompt followed by different completions")
    return PreferenceRecord(chosen[:shared], chosen[shared:], rejected[shared:])


def _prompt_record(row: dict, where: str) -> PromptRecord:
    if "prompt" not in row:
        raise DatasetError(f"{where}: missing field 'prompt'")
    columns = {k: v for k, v in row.items() if k != "prompt"}
    return PromptRecord(_prompt(row["prompt"], where, "prompt"), columns)


def _string(value, where: str, name: str) -> str:
    if not isinstance(value, str):
        raise DatasetError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
    return value


def _prompt(value, where: str, name: str) -> Prompt:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return _messages(value, where, name)
    raise DatasetError(f"{where}: field {name!r} must be a string or a list of messages, "
                       f"got {type(value).__name__}")


def _messages(value, where: str, name: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise DatasetError(f"{where}: field {name!r} must be a non-empty list of messages")
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise DatasetError(f"{where}: field '{name}[{i}]' must be an object with 'role' and 'content'")
        if message.get("role") not in ROLES:
            raise DatasetError(f"{where}: field '{name}[{i}].role' must be one of {', '.join(ROLES)}, "
                               f"got {message.get('role')!r}")
        if not isinstance(message.get("content"), str):
            raise DatasetError(f"{where}: field '{name}[{i}].content' must be a string, "
                               f"got {type(message.get('content')).__name__}")
    return value
