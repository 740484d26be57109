"""Reward functions with TRL's signature, `fn(prompts, completions, **columns) -> list[float]`.

`columns` are the extra columns of the RL prompt dataset, one list entry per completion (e.g.
`answer`). A completion is a string, or (TRL's conversational form) a list of messages whose last
assistant message is the answer text. Users bring their own as `module:function`.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lazarus.data.math import answers_match, extract_answer
from lazarus.errors import LazarusError

RewardFn = Callable[..., list[float]]

# A number (integer, decimal or fraction, optionally signed) or a choice letter A-E.
_ANSWER_VALUE = r"[-+]?\d+(?:\.\d+)?(?:/\d+)?|[A-Ea-e]"
_FINAL_ANSWER_LINE = re.compile(rf"(?:^|\n)Answer:[ \t]*(?:{_ANSWER_VALUE})[ \t]*\.?\s*\Z")


def accuracy_reward(prompts, completions, answer, **kwargs) -> list[float]:
    """1.0 where the completion's final answer (`extract_answer`: `Answer:`, boxed, "the answer is", else
    the last number) equals the gold `answer` (`answers_match`: math-verify, so "0.75" equals "3/4"), else 0.0.
    """
    return _accuracy(completions, answer, last_number_fallback=True)


def strict_accuracy_reward(prompts, completions, answer, **kwargs) -> list[float]:
    """`accuracy_reward` without the last-number fallback: an answer counts only where it is marked
    (`Answer:`, boxed or "the answer is"), so a number that merely ends the text scores 0."""
    return _accuracy(completions, answer, last_number_fallback=False)


def _accuracy(completions, answer, *, last_number_fallback: bool) -> list[float]:
    if len(answer) != len(completions):
        raise ValueError(f"accuracy_reward: {len(completions)} completions but {len(answer)} answers")
    return [1.0 if answers_match(extract_answer(completion_text(c), last_number_fallback=last_number_fallback),
                                 str(gold)) else 0.0
            for c, gold in zip(completions, answer)]


def format_reward(prompts, completions, **kwargs) -> list[float]:
    """1.0 where the completion ends with a well-formed answer line, as `lazarus.data.math.INSTRUCTION` asks.

    The rule: after trailing whitespace, the last line is `Answer: <value>` (optionally ending with a
    period), where `<value>` is a number — an integer, a decimal or a fraction `p/q`, optionally
    signed — or a single choice letter A-E. Nothing may follow that line.
    """
    return [1.0 if _FINAL_ANSWER_LINE.search(completion_text(c)) else 0.0 for c in completions]


BUILTIN_REWARDS: dict[str, RewardFn] = {"accuracy": accuracy_reward, "accuracy_strict": strict_accuracy_reward,
                                         "format": format_reward}


def resolve_reward_function(spec: str) -> RewardFn:
    """A built-in name ("accuracy", "accuracy_strict", "format") or `module:function`, imported; else ValueError."""
    if spec in BUILTIN_REWARDS:
        return BUILTIN_REWARDS[spec]
    module_name, sep, function_name = spec.partition(":")
    if not sep or not module_name or not function_name:
        raise ValueError(f"reward function {spec!r} is neither a built-in ({', '.join(BUILTIN_REWARDS)}) "
                         f"nor 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"reward function {spec!r}: cannot import module {module_name!r} ({e})") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ValueError(  # noqa: TRY004  (a bad spec is a value error, like the other cases)
            f"reward function {spec!r}: module {module_name!r} has no function {function_name!r}")
    return function


def reward_name(spec: str) -> str:
    """The name a reward is logged and selected under: `pkg.mod:digit_reward` -> `digit`, `accuracy` -> `accuracy`."""
    return spec.split(":")[-1].removesuffix("_reward")


def completion_text(completion) -> str:
    """The text of a completion: the string itself, or the content of the last assistant message."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        for message in reversed(completion):
            if isinstance(message, dict) and message.get("role", "assistant") == "assistant":
                return str(message.get("content", ""))
        return ""
    raise TypeError(f"a completion must be a string or a list of messages, got {type(completion).__name__}")


class RewardColumnError(LazarusError, ValueError):
    """A reward function needs a dataset column that rows lack; names the function, the column and the file."""


#: Arguments every reward call supplies; any other parameter without a default is a dataset column.
_SUPPLIED = {"prompts", "completions", "completion_ids"}


def required_columns(fn) -> list[str]:
    """The dataset columns `fn` cannot do without: its parameters beyond prompts/completions that have no
    default (for `accuracy_reward`: `answer`). Functions taking only `**kwargs` need none."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in parameters
            if p.name not in _SUPPLIED and p.default is inspect.Parameter.empty
            and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]


def check_reward_columns(reward_functions: list[RewardFunction], rows: list, source: str) -> None:
    """Refuse, at load, a dataset whose rows lack a column a reward function needs.

    `rows` are `PromptRecord`s (their `columns`) or plain dicts. The error names the function, the
    column, the file and the first row without it (and how many lack it), instead of rows silently scoring
    0 or a traceback from inside the function mid-run.
    """
    for rf in reward_functions:
        for column in required_columns(rf.fn):
            missing = [i for i, row in enumerate(rows)
                       if column not in (row.columns if hasattr(row, "columns") else row)
                       or (row.columns if hasattr(row, "columns") else row)[column] is None]
            if not missing:
                continue
            first = rows[missing[0]]
            where = getattr(first, "where", "") or f"{source}: row {missing[0] + 1}"
            scope = "no row has it" if len(missing) == len(rows) else f"{len(missing)} of {len(rows)} rows lack it"
            raise RewardColumnError(f"{where}: reward function {rf.name!r} needs column {column!r}, which this row "
                                    f"lacks ({scope} in {source})")


@dataclass
class RewardFunction:
    """A named, weighted reward function of TRL's signature."""

    name: str
    fn: Callable  # fn(prompts, completions, **columns) -> list[float | None]
    weight: float = 1.0


def call_reward(reward_fn, prompts: list, completions: list[str], completion_ids: list[list[int]],
                columns: list[dict]) -> np.ndarray:
    """Call a TRL-signature reward function; each row's extra columns go as keyword lists, None -> NaN.

    Conversational prompts (message lists) get their completions as one assistant message, as in TRL.
    """
    conversational = bool(prompts) and isinstance(prompts[0], list)
    shown = [[{"role": "assistant", "content": c}] for c in completions] if conversational else completions
    keys = set().union(*(c.keys() for c in columns)) if columns else set()
    keys.discard("prompt")
    kwargs = {k: [c.get(k) for c in columns] for k in keys}
    values = reward_fn(prompts=prompts, completions=shown, completion_ids=completion_ids, **kwargs)
    if len(values) != len(completions):
        raise ValueError(f"reward function {getattr(reward_fn, '__name__', reward_fn)} returned {len(values)} "
                         f"values for {len(completions)} completions")
    return np.array([np.nan if v is None else float(v) for v in values], np.float64)


def score(reward_functions: list[RewardFunction], prompts: list, completions: list[str],
          completion_ids: list[list[int]], columns: list[dict]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Total weighted reward per completion and each function's raw rewards (None -> NaN, not counted)."""
    components, total = {}, np.zeros(len(completions), np.float64)
    for rf in reward_functions:
        raw = call_reward(rf.fn, prompts, completions, completion_ids, columns)
        components[rf.name] = raw
        total += rf.weight * np.nan_to_num(raw, nan=0.0)
    return total, components
