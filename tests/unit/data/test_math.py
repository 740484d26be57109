"""The math task generator and answer checking."""

import collections
import json
import re
from fractions import Fraction

import pytest

from lazarus.data.math import INSTRUCTION, KINDS, answers_match, extract_answer, generate_problems, write_math_dataset
from lazarus.data.records import read_preference, read_prompts, read_sft


def test_generate_problems_is_deterministic_per_seed_and_prompts_are_distinct():
    a = generate_problems(60, seed=5)
    assert a == generate_problems(60, seed=5)
    assert a != generate_problems(60, seed=6)
    assert len({p["prompt"] for p in a}) == 60


@pytest.mark.parametrize("difficulty", [1, 2, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_every_solution_ends_with_its_answer_and_every_wrong_solution_does_not(kind, difficulty):
    # given
    problems = generate_problems(25, kinds=[kind], difficulty=difficulty, seed=difficulty)
    for problem in problems:
        # then: the worked solution's extracted answer verifies against the gold answer
        assert problem["kind"] == kind and problem["difficulty"] == difficulty
        assert problem["solution"].splitlines()[-1] == f"Answer: {problem['answer']}"
        assert answers_match(extract_answer(problem["solution"]), problem["answer"]), problem
        # and the rejected solution's does not
        assert not answers_match(extract_answer(problem["wrong_solution"]), problem["answer"]), problem


@pytest.mark.parametrize("difficulty", [1, 3])
def test_a_comparisons_slip_is_a_wrong_letter_or_the_answer_to_the_opposite_question(difficulty):
    # given comparison problems (two choices at difficulty 1, three at 3)
    problems = generate_problems(200, kinds=["comparison"], difficulty=difficulty, seed=0)
    slips = collections.Counter()
    for problem in problems:
        word = "larger" if problem["prompt"].startswith("Which is larger?") else "smaller"
        opposite = "smaller" if word == "larger" else "larger"
        final = problem["wrong_solution"].splitlines()[-2]
        letter = extract_answer(problem["wrong_solution"])
        # then the rejected solution keeps the chosen one's working and changes only its last two lines
        assert problem["wrong_solution"].splitlines()[:-2] == problem["solution"].splitlines()[:-2]
        assert final == f"The {word} one is {letter}" or final == f"The {opposite} one is {letter}", problem
        slips[final.split()[1] == word] += 1
        if final.split()[1] == opposite:  # and names the right answer to the question it wrongly answers
            values = dict(re.findall(r"([ABC]): (\S+?)(?= or|\. Answer)", problem["prompt"]))
            numbers = {k: float(Fraction(v.rstrip("%")) / (100 if v.endswith("%") else 1)) for k, v in values.items()}
            pick = max if opposite == "larger" else min
            assert letter == pick(numbers, key=numbers.get), problem
    # and both slips are common (about half each)
    assert 0.3 < slips[False] / len(problems) < 0.7


def test_difficulty_one_arithmetic_is_short_with_one_and_two_digit_operands():
    for problem in generate_problems(200, kinds=["arithmetic"], difficulty=1, seed=0):
        a, op, b = problem["prompt"].removeprefix("What is ").removesuffix("?").split()
        assert min(len(a), len(b)) == 1 and max(len(a), len(b)) <= 2 and op in "+-*"
        assert problem["solution"] == f"{a} {op} {b} = {problem['answer']}\nAnswer: {problem['answer']}"
        assert int(problem["answer"]) >= 0


def test_kinds_may_be_a_comma_separated_string():
    problems = generate_problems(20, kinds="arithmetic, comparison", seed=0)
    assert problems == generate_problems(20, kinds=["arithmetic", "comparison"], seed=0)


def test_generate_problems_rejects_unknown_kinds_and_difficulties():
    with pytest.raises(ValueError, match="unknown problem kind 'algebra'"):
        generate_problems(3, kinds=["algebra"])
    with pytest.raises(ValueError, match="difficulty must be one of"):
        generate_problems(3, difficulty=4)


def test_write_math_dataset_writes_every_format_with_a_disjoint_held_out_split(tmp_path):
    # when
    paths = write_math_dataset(tmp_path, n_train=40, n_eval=10, seed=1)
    # then: every file parses with the matching reader and has the requested size
    assert set(paths) == {f"{f}_{s}" for f in ("sft", "preference", "rl") for s in ("train", "eval")}
    sft_train, rl_eval = read_sft(paths["sft_train"]), read_prompts(paths["rl_eval"])
    assert len(sft_train) == 40 and len(rl_eval) == 10
    assert len(read_preference(paths["preference_eval"])) == 10
    train_prompts = {r.prompt for r in read_prompts(paths["rl_train"])}
    assert not train_prompts & {r.prompt for r in rl_eval}
    assert set(rl_eval[0].columns) == {"answer", "kind"}
    for pair in read_preference(paths["preference_train"]):
        assert pair.chosen != pair.rejected
    # and no temp files remain
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths.values())


def test_answer_only_turns_that_share_of_sft_completions_into_the_bare_answer_line(tmp_path):
    # given the same problems written with every solution worked and with half answer-only
    worked = write_math_dataset(tmp_path / "worked", n_train=400, n_eval=0, kinds=["multi_step"], seed=3)
    mixed = write_math_dataset(tmp_path / "mixed", n_train=400, n_eval=0, kinds=["multi_step"], seed=3,
                               answer_only=0.5)
    full, half = read_sft(worked["sft_train"]), read_sft(mixed["sft_train"])
    # then the prompts are the same, and about half the completions are only the final answer line
    assert [r.prompt for r in full] == [r.prompt for r in half]
    bare = [h for f, h in zip(full, half) if f.completion != h.completion]
    assert 150 < len(bare) < 250
    for f, h in zip(full, half):
        assert h.completion in (f.completion, f.completion.splitlines()[-1])
        assert extract_answer(h.completion) == extract_answer(f.completion)
    # and the RL prompts and preference pairs do not change
    for name in ("rl_train", "preference_train"):
        assert worked[name].read_text() == mixed[name].read_text()
    # and a fraction outside [0, 1] is refused
    with pytest.raises(ValueError, match="answer_only"):
        write_math_dataset(tmp_path / "bad", n_train=10, n_eval=0, answer_only=1.5)


def test_write_math_dataset_refuses_more_problems_than_exist_and_writes_nothing(tmp_path):
    # difficulty-1 fractions (same denominator 2..9) have 204 distinct prompts
    with pytest.raises(ValueError, match="only 204 distinct problems"):
        write_math_dataset(tmp_path / "out", n_train=300, n_eval=10, kinds=["fractions"], difficulty=1)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("completion, expected", [
    ("12 + 7 = 19\nAnswer: 19", "19"),
    ("Answer: 3\nwait, recheck.\nAnswer: 4.", "4"),
    ("so the result is \\boxed{\\frac{3}{4}}", "\\frac{3}{4}"),
    ("Answer: 5\nso \\boxed{6}", "5"),
    ("no answer here", None),
    ("Answer:   \n", None),
])
def test_extract_answer_takes_the_last_answer_line_then_boxed(completion, expected):
    assert extract_answer(completion) == expected


# Completions SmolLM2-135M-Instruct wrote for generated problems (greedy, dequantized GGUF), and forms
# TRL's and math-verify's extractors accept.
@pytest.mark.parametrize("completion, expected, strict", [
    ("8 + 4 = 12.", "12", None),
    ("The answer is 70.", "70", "70"),
    ("To add 41 and 9, we combine them: 41 + 9 = 50. The final answer is 50.", "50", "50"),
    ("Sam has 14 apples now.\nAnswer: 14 apples.", "14", "14"),
    ("**Answer: 1,250**", "1250", "1250"),
    ("So the answer is $\\frac{3}{4}$.", "\\frac{3}{4}", "\\frac{3}{4}"),
    ("A: 0.5 = 0.5\nB: 3/4 = 0.75\nThe larger one is B\nAnswer: B", "B", "B"),
    ("19 - 1 is a mathematical operation. In other words, 19 - 1 equals 19.", "19", None),
    ("We get \\boxed{42} after checking 3 cases.", "42", "42"),
    ("-4 + 1 = -3", "-3", None),
    ("I am not sure.", None, None),
])
def test_extract_answer_reads_real_completions_with_and_without_the_last_number_fallback(completion, expected,
                                                                                          strict):
    # when: the default extractor (last-number fallback on) and the strict one
    # then: marked answers are read either way; an unmarked final number only with the fallback
    assert extract_answer(completion) == expected
    assert extract_answer(completion, last_number_fallback=False) == strict


def test_write_math_dataset_appends_the_instruction_to_every_prompt(tmp_path):
    # given / when: the same problems with and without the instruction
    plain = write_math_dataset(tmp_path / "plain", n_train=5, n_eval=2, seed=3)
    told = write_math_dataset(tmp_path / "told", n_train=5, n_eval=2, seed=3, instruction=INSTRUCTION)
    # then: only the prompts differ, by the instruction at their end
    for name in ("rl_train", "rl_eval", "sft_train"):
        rows_plain = [json.loads(line) for line in plain[name].read_text().splitlines()]
        rows_told = [json.loads(line) for line in told[name].read_text().splitlines()]
        for a, b in zip(rows_plain, rows_told, strict=True):
            assert b["prompt"] == f"{a['prompt']} {INSTRUCTION}"
            assert {k: v for k, v in a.items() if k != "prompt"} == {k: v for k, v in b.items() if k != "prompt"}


@pytest.mark.parametrize("predicted, gold", [
    ("0.75", "3/4"), ("19.0", "19"), ("12.5", "25/2"), ("6/8", "3/4"), ("-3", "-3"), ("1,000", "1000"),
    ("\\frac{3}{4}", "3/4"), ("a", "A"), ("(B)", "B"),
])
def test_answers_match_equivalent_answers(predicted, gold):
    assert answers_match(predicted, gold)


@pytest.mark.parametrize("predicted, gold", [
    ("19", "190"), ("190", "19"), ("4/3", "3/4"), ("3", "-3"), ("0.667", "2/3"), ("B", "A"),
    ("A is larger", "A"), ("", "5"), (None, "5"), ("x", "5"), ("1" * 200, "1" * 200),
    # an unevaluated expression is not a numeric answer (SmolLM2 under GRPO learned to copy the question)
    ("in the form of 2 + 75, and the answer is in the form", "77"), ("2+75", "77"), ("3 * 4", "12"),
    ("3 \\times 4", "12"), ("10 - 3", "7"), ("1/2 + 1/4", "3/4"),
])
def test_answers_match_rejects_different_answers(predicted, gold):
    assert not answers_match(predicted, gold)


def test_answers_match_works_off_the_main_thread():
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(answers_match, ["0.75", "0.7"], ["3/4", "3/4"])) == [True, False]


def test_cli_data_math_writes_the_files_and_reports_bad_kinds_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from lazarus.cli.data import app

    runner = CliRunner()
    result = runner.invoke(app, ["math", "--out", str(tmp_path), "--train", "8", "--eval", "2",
                                 "--kinds", "arithmetic,comparison", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert f"wrote {tmp_path / 'rl_eval.jsonl'}" in result.output
    rows = [json.loads(line) for line in (tmp_path / "rl_train.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and {r["kind"] for r in rows} <= {"arithmetic", "comparison"}
    bad = runner.invoke(app, ["math", "--out", str(tmp_path / "x"), "--kinds", "algebra"])
    assert bad.exit_code == 2 and "unknown problem kind 'algebra'" in bad.output
