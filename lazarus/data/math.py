"""The math task: a seeded generator of problems with worked solutions, and answer checking.

Problem kinds: arithmetic, fractions, percentages, word problems, multi-step, comparison; each at
difficulty 1 (small numbers, one step: a ~1M-parameter model learns it in minutes) to 3.
A problem is a dict:

    {"prompt": "What is 12 + 7?", "answer": "19", "solution": "12 + 7 = 19\\nAnswer: 19",
     "kind": "arithmetic", "difficulty": 1, "wrong_solution": "12 + 7 = 18\\nAnswer: 18"}

Every solution ends with the line `Answer: <answer>`; `wrong_solution` is the same working with a
plausible slip in the final step (the rejected side of preference pairs): a wrong number, or for half
the comparisons the answer to the opposite question. Canonical answers are
integers ("19", "-3"), fractions in lowest terms ("3/4"), terminating decimals ("12.5") or a choice
letter ("A").

`answers_match` checks answers with math-verify (sympy underneath): "0.75" equals "3/4" and "19.0"
equals "19"; choice letters compare case-insensitively. Where the gold answer is a number, an unevaluated
expression ("2 + 75", "3 \\times 4") is not an answer although sympy would evaluate it: a policy rewarded
for it learns to copy the question's operands ("The answer is in the form of 2 + 75"), as SmolLM2 did.
"""

from __future__ import annotations

import math
import random
import re
import threading
from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from fractions import Fraction
from pathlib import Path

from lazarus.data.io import write_jsonl

KINDS = ("arithmetic", "fractions", "percentages", "word_problems", "multi_step", "comparison")
DIFFICULTIES = (1, 2, 3)
MAX_ANSWER_CHARS = 100  # longer "answers" are not parsed (bounds the verifier's work without a timeout)


@dataclass
class _Draft:
    """A problem before it is rendered: the final line is `final_prefix + answer`."""

    prompt: str
    final_prefix: str
    answer: str
    wrong_answer: str
    steps: list[str] = field(default_factory=list)
    wrong_prefix: str | None = None  # the wrong solution's final-line prefix, when it differs

    def solution(self, answer: str, final_prefix: str | None = None) -> str:
        final_prefix = self.final_prefix if final_prefix is None else final_prefix
        return "\n".join([*self.steps, final_prefix + answer, f"Answer: {answer}"])


def generate_problems(n: int, *, kinds: list[str] | tuple[str, ...] | str | None = None, difficulty: int = 1,
                      seed: int = 0) -> list[dict]:
    """`n` problems with distinct prompts, the same list for the same arguments.

    `kinds`: a list of `KINDS`, or one comma-separated string ("arithmetic,comparison"); None = all.
    """
    kinds = _check_kinds(kinds)
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(f"lazarus-math/{seed}")
    problems, seen = [], set()
    misses = 0  # draws in a row that repeated an earlier prompt
    while len(problems) < n:
        if misses > max(2000, 10 * n):
            raise ValueError(f"only {len(problems)} distinct problems of kinds {', '.join(kinds)} at "
                             f"difficulty {difficulty} were found; ask for fewer or widen kinds/difficulty")
        kind = rng.choice(kinds)
        draft = _GENERATORS[kind](rng, difficulty)
        if draft.prompt in seen:
            misses += 1
            continue
        misses = 0
        seen.add(draft.prompt)
        problems.append({"prompt": draft.prompt, "answer": draft.answer,
                         "solution": draft.solution(draft.answer), "kind": kind, "difficulty": difficulty,
                         "wrong_solution": draft.solution(draft.wrong_answer, draft.wrong_prefix)})
    return problems


def write_math_dataset(out_dir: str | Path, *, n_train: int, n_eval: int, kinds=None, difficulty: int = 1,
                       seed: int = 0, answer_only: float = 0.0, instruction: str | None = None) -> dict[str, Path]:
    """Write SFT, preference and RL-prompt JSONL (train and held-out eval) to `out_dir`.

    Files: sft_{train,eval}.jsonl (`prompt`, `completion` = solution), preference_{train,eval}.jsonl
    (`prompt`, `chosen` = solution, `rejected` = wrong solution), rl_{train,eval}.jsonl (`prompt`,
    `answer`, `kind`). No eval prompt occurs in train; with `n_eval=0` no eval files are written.
    Each file is written atomically. Returns the paths by name ("sft_train", "rl_eval", ...).

    `answer_only` is the fraction of SFT rows (drawn with `seed`, the same problems either way) whose
    completion is the final `Answer: ...` line alone, without the worked steps: demonstrations in two
    styles, as collected data often is. A model fine-tuned on the mix answers in either style; on
    multi-step problems showing the work is far more accurate, and RL with an accuracy reward learns to
    choose it (the `lazarus demo` story).

    `instruction` (e.g. `INSTRUCTION`) is appended to every prompt after a space: how a pretrained chat
    model is told the answer format the rewards look for. None or "" leaves prompts as generated.
    """
    if n_train < 1 or n_eval < 0:
        raise ValueError(f"need n_train >= 1 and n_eval >= 0, got n_train={n_train}, n_eval={n_eval}")
    if not 0.0 <= answer_only <= 1.0:
        raise ValueError(f"answer_only must be a fraction in [0, 1], got {answer_only}")
    problems = generate_problems(n_train + n_eval, kinds=kinds, difficulty=difficulty, seed=seed)
    if instruction:
        problems = [{**p, "prompt": f"{p['prompt']} {instruction.strip()}"} for p in problems]
    style = random.Random(f"answer_only:{seed}")
    splits = {"train": problems[:n_train], "eval": problems[n_train:]}
    if n_eval == 0:
        del splits["eval"]
    rows = {}
    for split, split_problems in splits.items():
        rows[f"sft_{split}"] = [{"prompt": p["prompt"], "completion": _answer_line(p["solution"])
                                 if style.random() < answer_only else p["solution"]} for p in split_problems]
        rows[f"preference_{split}"] = [{"prompt": p["prompt"], "chosen": p["solution"],
                                        "rejected": p["wrong_solution"]} for p in split_problems]
        rows[f"rl_{split}"] = [{"prompt": p["prompt"], "answer": p["answer"], "kind": p["kind"]}
                               for p in split_problems]
    out_dir = Path(out_dir)
    paths = {}
    for name, name_rows in rows.items():
        paths[name] = out_dir / f"{name}.jsonl"
        write_jsonl(paths[name], name_rows)
    return paths


# ---------------------------------------------------------------------------------------------
# Answer checking

#: The instruction `lazarus data math` appends to every prompt by default: what the format reward checks
#: and the first thing the extractor looks for. Pretrained chat models answer in prose otherwise.
INSTRUCTION = "Give only the final answer in the form 'Answer: N'."

_ANSWER_LINE = re.compile(r"Answer:[ \t]*([^\n]*)")
_ANSWER_IS = re.compile(r"\b(?:final )?answer is[:\s]*([^\n]*)", re.IGNORECASE)
_NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?(?:/\d+)?")
_LEADING_VALUE = re.compile(r"\s*([-+]?\d[\d,]*(?:\.\d+)?(?:/\d+)?|\(?[A-Ea-e]\)?(?![\w]))")
_CHOICE = re.compile(r"[A-Ea-e]")
#: a number, an arithmetic operator, a number: an expression left for the reader to evaluate ("/" is a fraction)
_UNEVALUATED = re.compile(r"\d\s*(?:[-+*×÷^]|\\times|\\cdot|\\div)\s*[-+(]?\d")


def extract_answer(completion: str, *, last_number_fallback: bool = True) -> str | None:
    """The final answer of a completion, as math-verify and TRL's math rewards look for it.

    In order: the value after the last `Answer:` (to the end of its line); the last `\\boxed{...}`; the
    value after the last "the answer is" / "the final answer is"; and, unless `last_number_fallback` is
    off, the last number in the text ("8 + 4 = 12." -> "12"). After a marker, a leading number or choice
    letter is taken ("Answer: 12 apples." -> "12"); anything else is returned as written, without
    markdown emphasis, `$` and a final period, for math-verify to parse. None when nothing is found.
    """
    matches = _ANSWER_LINE.findall(completion)
    if matches:
        return _marked_value(matches[-1])
    boxed = _last_boxed(completion)
    if boxed is not None:
        return boxed
    matches = _ANSWER_IS.findall(completion)
    if matches:
        return _marked_value(matches[-1])
    if last_number_fallback:
        numbers = _NUMBER.findall(completion)
        if numbers:
            return numbers[-1].replace(",", "")
    return None


def _marked_value(text: str) -> str | None:
    """The answer written after a marker: a leading number/choice letter, else the cleaned text."""
    text = text.replace("**", "").replace("$", "").strip()
    leading = _LEADING_VALUE.match(text)
    if leading:
        return leading.group(1).strip("()").replace(",", "")
    text = text.rstrip(".").strip()
    return text or None


def answers_match(predicted: str | None, gold: str) -> bool:
    """Whether `predicted` is mathematically the same answer as `gold` (see module docstring)."""
    if predicted is None:
        return False
    predicted, gold = predicted.strip(), gold.strip()
    if _CHOICE.fullmatch(gold):
        return predicted.strip("().: ").upper() == gold.upper()
    if not predicted or len(predicted) > MAX_ANSWER_CHARS:
        return False
    if _NUMBER.fullmatch(gold) and _UNEVALUATED.search(predicted):
        return False
    from math_verify import parse, verify

    # math-verify's timeouts use signal.alarm, which only works on the main thread.
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    gold_parsed = parse(gold, parsing_timeout=timeout)
    predicted_parsed = parse(predicted, parsing_timeout=timeout)
    if not gold_parsed or not predicted_parsed:
        return False
    return bool(verify(gold_parsed, predicted_parsed, timeout_seconds=timeout))


def _last_boxed(text: str) -> str | None:
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j].strip() or None
    return None


# ---------------------------------------------------------------------------------------------
# Generators: one per kind, each (rng, difficulty) -> _Draft

NAMES = ("Sam", "Ana", "Lee", "Maya", "Omar", "Kim", "Ravi", "Zoe")
ITEMS = ("apples", "pens", "books", "coins", "cards", "marbles", "cookies", "tickets")


def _arithmetic(rng: random.Random, difficulty: int) -> _Draft:
    op = rng.choice("+-*")
    if difficulty == 1:  # a number below 100 and a one-digit number: "12 + 7", "3 * 11"
        if op == "*":
            a, b = rng.randint(2, 12), rng.randint(2, 9)
        else:
            a, b = rng.randint(0, 99), rng.randint(0, 9)
        if (op == "-" and b > a) or (op != "-" and rng.random() < 0.5):
            a, b = b, a
    elif op == "*":
        a, b = rng.randint(10, 99), (rng.randint(2, 9) if difficulty == 2 else rng.randint(10, 99))
    else:
        low, high = {2: (10, 99), 3: (100, 999)}[difficulty]
        a, b = rng.randint(low, high), rng.randint(low, high)
        if op == "-" and difficulty < 3 and b > a:
            a, b = b, a  # no negative results below difficulty 3
    result = {"+": a + b, "-": a - b, "*": a * b}[op]
    return _Draft(f"What is {a} {op} {b}?", f"{a} {op} {b} = ", str(result), str(_slip(rng, result)))


def _fractions(rng: random.Random, difficulty: int) -> _Draft:
    if difficulty == 1:  # same denominator, addition
        da = db = rng.randint(2, 9)
        na, nb, op = rng.randint(1, da - 1), rng.randint(1, db - 1), "+"
    elif difficulty == 2:  # different denominators, addition or subtraction
        da, db = rng.sample(range(2, 13), 2)
        na, nb, op = rng.randint(1, da - 1), rng.randint(1, db - 1), rng.choice("+-")
    else:  # multiplication or division
        da, db, na, nb = rng.randint(2, 9), rng.randint(2, 9), rng.randint(1, 9), rng.randint(1, 9)
        na, nb = (na + 1 if na % da == 0 else na), (nb + 1 if nb % db == 0 else nb)  # no whole operands
        op = rng.choice("*/")
    a, b = Fraction(na, da), Fraction(nb, db)
    word = "divided by" if op == "/" else op
    expressions = [f"{na}/{da} {word} {nb}/{db}"]
    if op in "+-":
        common = math.lcm(da, db)
        ma, mb = na * common // da, nb * common // db
        expressions += [f"{ma}/{common} {op} {mb}/{common}", f"{ma + mb if op == '+' else ma - mb}/{common}"]
        result = a + b if op == "+" else a - b
        wrong = Fraction(na + nb if op == "+" else na - nb, da + db)  # adding numerators and denominators
    elif op == "*":
        expressions.append(f"{na * nb}/{da * db}")
        result, wrong = a * b, a / b
    else:
        expressions += [f"{na}/{da} * {db}/{nb}", f"{na * db}/{da * nb}"]
        result, wrong = a / b, a * b  # forgetting to flip the divisor
    if wrong == result:
        wrong = result + Fraction(1, result.denominator)
    answer = _as_fraction(result)
    steps, final_prefix = _chain(expressions, answer)
    return _Draft(f"What is {expressions[0]}? Give the answer as a fraction in lowest terms.", final_prefix,
                  answer, _as_fraction(wrong), steps)


def _percentages(rng: random.Random, difficulty: int) -> _Draft:
    if difficulty == 3:
        p = rng.randint(1, 99)
        x = rng.randint(1, 5) * (100 // math.gcd(p, 100))  # makes p% of x a whole number
        part = p * x // 100
        if rng.random() < 0.5:
            return _Draft(f"What percent of {x} is {part}?", f"{part}/{x} * 100 = ", str(p),
                          str(_slip(rng, p)))
        # The slip: giving the increase instead of the new price.
        return _Draft(f"A price of {x} rises by {p}%. What is the new price?", f"{x} + {part} = ",
                      str(x + part), str(part), [f"{p}% of {x} = {p}/100 * {x} = {part}"])
    if difficulty == 1:
        p = rng.choice((10, 20, 25, 50, 75))
        x = rng.randint(1, 10) * (100 // math.gcd(p, 100))
    else:
        p, x = rng.randint(1, 99), rng.randint(10, 400)
    result = Fraction(p * x, 100)
    wrong = result * 10 if rng.random() < 0.5 else result + 1  # a misplaced decimal point, or a slip
    return _Draft(f"What is {p}% of {x}?", f"{p}% of {x} = {p}/100 * {x} = ", _decimal(result),
                  _decimal(wrong))


def _word_problems(rng: random.Random, difficulty: int) -> _Draft:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    stories = ("more", "fewer", "groups", "share") if difficulty > 1 else ("more", "fewer", "groups")
    story = rng.choice(stories)
    if difficulty == 3:
        a, b, c = rng.randint(10, 99), rng.randint(2, 9), rng.randint(2, 12)
        return _Draft(f"{name} has {a} {item} and buys {b} boxes with {c} {item} in each box. "
                      f"How many {item} does {name} have now?", f"{a} + {b * c} = ", str(a + b * c),
                      str((a + b) * c), [f"{b} * {c} = {b * c}"])
    high = 20 if difficulty == 1 else 99
    if story == "more":
        a, b = rng.randint(2, high), rng.randint(2, high)
        prompt = f"{name} has {a} {item} and buys {b} more. How many {item} does {name} have now?"
        prefix, result = f"{a} + {b} = ", a + b
    elif story == "fewer":
        a = rng.randint(3, high)
        b = rng.randint(1, a - 1)
        prompt = f"{name} has {a} {item} and gives away {b}. How many {item} does {name} have left?"
        prefix, result = f"{a} - {b} = ", a - b
    elif story == "groups":
        a, b = rng.randint(2, 9), rng.randint(2, 9 if difficulty == 1 else 20)
        prompt = f"{name} has {a} bags with {b} {item} in each bag. How many {item} does {name} have?"
        prefix, result = f"{a} * {b} = ", a * b
    else:
        b, result = rng.randint(2, 9), rng.randint(2, 20)
        prompt = (f"{name} shares {b * result} {item} equally among {b} friends. "
                  f"How many {item} does each get?")
        prefix = f"{b * result} / {b} = "
    return _Draft(prompt, prefix, str(result), str(_slip(rng, result)))


def _multi_step(rng: random.Random, difficulty: int) -> _Draft:
    n_ops, high = {1: (2, 9), 2: (3, 20), 3: (3, 99)}[difficulty]
    value = rng.randint(1, high)
    expression, steps = str(value), []
    for index in range(n_ops):
        op = rng.choice("+-*")
        operand = rng.randint(2, 5 if difficulty == 1 else 9) if op == "*" else rng.randint(1, high)
        if op == "-" and difficulty < 3 and operand > value:
            op = "+"
        result = {"+": value + operand, "-": value - operand, "*": value * operand}[op]
        line = f"{value} {op} {operand} = "
        expression = f"{expression} {op} {operand}" if index == 0 else f"({expression}) {op} {operand}"
        if index < n_ops - 1:
            steps.append(line + str(result))
        value = result
    return _Draft(f"What is {expression}?", line, str(value), str(_slip(rng, value)), steps)


def _comparison(rng: random.Random, difficulty: int) -> _Draft:
    n_choices = 3 if difficulty == 3 else 2
    values: list[Fraction] = []
    texts: list[str] = []
    while len(values) < n_choices:
        form = "integer" if difficulty == 1 else "fraction" if difficulty == 2 else \
            rng.choice(("fraction", "decimal", "percent"))
        if form == "integer":
            value = Fraction(rng.randint(1, 99))
            text = str(value)
        elif form == "fraction":
            numerator, denominator = rng.randint(1, 11), rng.randint(2, 12)
            value, text = Fraction(numerator, denominator), f"{numerator}/{denominator}"
            if value.denominator == 1:
                continue
        else:
            value = Fraction(rng.randint(1, 99), 100)
            text = _decimal(value) if form == "decimal" else f"{value * 100}%"
        if value not in values:
            values.append(value)
            texts.append(text)
    letters = "ABC"[:n_choices]
    larger = rng.random() < 0.5
    best = (max if larger else min)(range(n_choices), key=lambda i: values[i])
    others = [i for i in range(n_choices) if i != best]
    word = "larger" if larger else "smaller"
    options = " or ".join(f"{letters[i]}: {texts[i]}" for i in range(n_choices))
    steps = [f"{letters[i]}: {texts[i]} = {_approx(values[i])}" for i in range(n_choices)
             if texts[i] != _approx(values[i])]
    prompt = f"Which is {word}? {options}. Answer with the letter."
    draft = _Draft(prompt, f"The {word} one is ", letters[best], letters[rng.choice(others)], steps)
    # Half the slips answer the opposite question ("The larger one is B" to "Which is smaller?"): a reward
    # model that saw only wrong letters learns to check the letter against the word in the completion, not
    # the question, and GRPO optimizing it found that hole (configs/grpo_rm_math.yaml). Drawn from the
    # prompt, not `rng`, so every problem of every seed stays what it was.
    if random.Random(prompt).random() < 0.5:
        opposite = min if larger else max
        draft.wrong_prefix = f"The {'smaller' if larger else 'larger'} one is "
        draft.wrong_answer = letters[opposite(range(n_choices), key=lambda i: values[i])]
    return draft


_GENERATORS = {"arithmetic": _arithmetic, "fractions": _fractions, "percentages": _percentages,
               "word_problems": _word_problems, "multi_step": _multi_step, "comparison": _comparison}


def _check_kinds(kinds) -> tuple[str, ...]:
    if kinds is None:
        return KINDS
    kinds = tuple(k.strip() for k in kinds.split(",")) if isinstance(kinds, str) else tuple(kinds)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"unknown problem kind {', '.join(map(repr, unknown)) or '(none given)'}: "
                         f"choose from {', '.join(KINDS)}")
    return kinds


def _chain(expressions: list[str], answer: str) -> tuple[list[str], str]:
    """Worked steps `e0 = e1`, `e1 = e2`, ... and the final-line prefix `en = `, skipping repeats and
    a last rewrite that already is the answer."""
    chain = [e for i, e in enumerate(expressions) if i == 0 or e != expressions[i - 1]]
    while len(chain) > 1 and chain[-1] == answer:
        chain.pop()
    return [f"{chain[i]} = {chain[i + 1]}" for i in range(len(chain) - 1)], f"{chain[-1]} = "


def _answer_line(solution: str) -> str:
    """The final `Answer: ...` line of a worked solution."""
    return solution.rsplit("\n", 1)[-1]


def _slip(rng: random.Random, value: int) -> int:
    """A plausible arithmetic slip: off by one, two or ten (never flipping a non-negative sign)."""
    delta = rng.choice((-10, -2, -1, 1, 2, 10))
    return value - delta if value >= 0 > value + delta else value + delta


def _as_fraction(value: Fraction, force: bool = False) -> str:
    """`p/q` in lowest terms; an integer prints as one unless `force`."""
    if value.denominator == 1 and not force:
        return str(value.numerator)
    return f"{value.numerator}/{value.denominator}"


def _decimal(value: Fraction) -> str:
    """A terminating fraction as a plain decimal ("12.5", "3", "-0.25")."""
    with localcontext() as context:
        context.prec = 50
        text = format((Decimal(value.numerator) / Decimal(value.denominator)).normalize(), "f")
    return text


def _approx(value: Fraction) -> str:
    exact = _decimal(value) if _terminates(value) else None
    if exact is not None and len(exact) <= 6:
        return exact
    return f"about {float(value):.3f}"


def _terminates(value: Fraction) -> bool:
    d = value.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    return d == 1


def write_math_levels(out_dir: str | Path, *, n_train: int, n_eval: int, levels: list[int] | tuple[int, ...],
                      kinds=None, seed: int = 0, answer_only: float = 0.0) -> dict[str, Path]:
    """`write_math_dataset` at several difficulty levels in one set of files, for curricula.

    Each level contributes `n_train` train and `n_eval` eval problems (drawn with seed `seed + level`,
    so a level's problems do not depend on which other levels are asked); rl_* rows carry a
    `difficulty` column, which `lazarus.data.curriculum` samples by. Rows are grouped by level, easiest
    first; the trainer shuffles.
    """
    import json
    import tempfile

    if not levels or any(level not in DIFFICULTIES for level in levels):
        raise ValueError(f"levels must be a non-empty list of {DIFFICULTIES}, got {levels!r}")
    merged: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for level in levels:
            paths = write_math_dataset(Path(scratch) / str(level), n_train=n_train, n_eval=n_eval, kinds=kinds,
                                       difficulty=level, seed=seed + level, answer_only=answer_only)
            for name, path in paths.items():
                rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
                if name.startswith("rl_"):
                    rows = [{**row, "difficulty": level} for row in rows]
                merged.setdefault(name, []).extend(rows)
    out_dir = Path(out_dir)
    written = {}
    for name, rows in merged.items():
        written[name] = out_dir / f"{name}.jsonl"
        write_jsonl(written[name], rows)
    return written
