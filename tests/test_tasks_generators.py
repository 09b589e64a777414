"""Generators, splits, mixes and demonstrations of tasks/.

Every answer is recomputed here independently of the generator code: expressions are evaluated with
``ast`` + ``Fraction``, equations are solved by substitution, countdown expressions are parsed to check
the numbers used, word problems have their own formulas per template, and instruction responses are
checked by a small local checker (rewards/ is not imported: it is written concurrently).
"""
from __future__ import annotations

import ast
import json
import re
from collections import Counter
from fractions import Fraction

import pytest

import tasks
from tasks import (
    TASKS,
    build,
    generate_arithmetic,
    generate_countdown,
    generate_instruction,
    generate_linear_equation,
    generate_word_problem,
    make_demonstration,
    make_splits,
)
from tasks.arithmetic import LEVELS as ARITHMETIC_LEVELS
from tasks.countdown import LEVELS as COUNTDOWN_LEVELS
from tasks.instruction import LEVELS as INSTRUCTION_LEVELS
from tasks.linear_equation import LEVELS as EQUATION_LEVELS
from tasks.word_problem import LEVELS as WORD_LEVELS

ALL_LEVELS = {
    "arithmetic": sorted(ARITHMETIC_LEVELS),
    "word_problem": list(WORD_LEVELS),
    "countdown": sorted(COUNTDOWN_LEVELS),
    "linear_equation": list(EQUATION_LEVELS),
    "instruction": list(INSTRUCTION_LEVELS),
}
TASK_LEVELS = [(task, level) for task, levels in ALL_LEVELS.items() for level in levels]
MATH_TASKS = ("arithmetic", "word_problem", "countdown", "linear_equation")
CONSTRAINT_KINDS = {
    "max_words", "min_words", "include_keywords", "exclude_words", "num_bullets", "lowercase", "uppercase",
    "start_with", "end_with", "no_commas", "num_paragraphs", "json",
}


# ----------------------------------------------------------------------------- independent evaluators

def evaluate(expression: str, x: Fraction | None = None) -> Fraction:
    """Exact value of an arithmetic expression (+ - * / × ÷, parentheses, decimals, optional x)."""
    tree = ast.parse(expression.replace("×", "*").replace("÷", "/").strip(), mode="eval")

    def walk(node):
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return Fraction(str(node.value))
        if isinstance(node, ast.Name) and node.id == "x" and x is not None:
            return x
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            value = walk(node.operand)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.BinOp):
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Add):
                return left + right
            if isinstance(node.op, ast.Sub):
                return left - right
            if isinstance(node.op, ast.Mult):
                return left * right
            if isinstance(node.op, ast.Div):
                return left / right
        raise ValueError(f"unsupported syntax in {expression!r}: {ast.dump(node)}")

    return walk(tree)


_NUMERIC_RUN = re.compile(r"[0-9.()+\-×÷*/= ]+")


def check_numeric_equations(text: str) -> tuple[int, list[str]]:
    """(how many 'a op b = c' runs were checked, runs that were false or unreadable) in worked steps.

    Runs glued to a letter (``3x + 5 = 20``) or with an empty side (``x = 5``) are algebra, not
    arithmetic, and are skipped.
    """
    checked, bad = 0, []
    for line in text.splitlines():
        for match in _NUMERIC_RUN.finditer(line):
            run = match.group()
            if "=" not in run:
                continue
            start = match.start() + len(run) - len(run.lstrip())
            end = match.start() + len(run.rstrip())
            if (start > 0 and line[start - 1].isalpha()) or (end < len(line) and line[end].isalpha()):
                continue
            parts = [part.strip().rstrip(".").strip() for part in run.split("=")]
            if "" in parts:  # "3x = 15": the letters were the other side
                continue
            try:
                values = [evaluate(part) for part in parts]
            except (ValueError, SyntaxError, ZeroDivisionError):
                bad.append(run.strip())
                continue
            checked += 1
            if len(set(values)) != 1:
                bad.append(run.strip())
    return checked, bad


_COLUMN = re.compile(r"= (\d+), write (\d+)(?:, carry (\d+))?")


def check_column_notes(text: str) -> list[str]:
    """Column-addition notes ("= 15, write 5, carry 1") whose written digit or carry is wrong."""
    bad = []
    for total, written, carry in _COLUMN.findall(text):
        if int(written) != int(total) % 10 or int(carry or 0) != int(total) // 10:
            bad.append(f"= {total}, write {written}, carry {carry or 0}")
    return bad


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:/\d+)?")


def last_number(text: str) -> Fraction:
    return Fraction(_NUMBER.findall(text)[-1])


def equation_value(side: str, x: Fraction) -> Fraction:
    """Evaluate one side of ``3x + 5``, ``9(x - 8)``, ``x/6``, ``0.25x`` at ``x``."""
    return evaluate(re.sub(r"(?<=[\d)])(?=[x(])", "*", side), x)


def as_functions(equation: str):
    left, right = equation.split(" = ")
    return (lambda x: equation_value(left, x)), (lambda x: equation_value(right, x))


def apply_step(action: str, left, right):
    """The equation after the stated action (``Subtract 2x from both sides``, ``Divide both sides by -3``)."""
    if action == "Expand the brackets":
        return left, right
    match = re.fullmatch(r"(Subtract|Add) (\S+) (?:from|to) both sides", action) or re.fullmatch(
        r"(Divide|Multiply) both sides by (\S+)", action)
    assert match, f"unknown step: {action}"
    verb, amount = match.groups()
    term = lambda x: equation_value(amount, x)  # noqa: E731 - amount may be "2x"
    ops = {
        "Subtract": lambda f: (lambda x: f(x) - term(x)),
        "Add": lambda f: (lambda x: f(x) + term(x)),
        "Divide": lambda f: (lambda x: f(x) / term(x)),
        "Multiply": lambda f: (lambda x: f(x) * term(x)),
    }
    return ops[verb](left), ops[verb](right)


def solve_linear(equation: str) -> Fraction:
    """Root of a linear equation, by evaluating (left - right) at x = 0 and x = 1."""
    left, right = equation.split("=")
    f0 = equation_value(left, Fraction(0)) - equation_value(right, Fraction(0))
    f1 = equation_value(left, Fraction(1)) - equation_value(right, Fraction(1))
    assert f1 != f0, f"not a linear equation with one root: {equation}"
    return -f0 / (f1 - f0)


WORD_FORMULAS = {
    "shopping_change": lambda v: v["bill"] - v["count"] * Fraction(v["price"]),
    "shopping_total": lambda v: v["count_a"] * Fraction(v["price_a"]) + v["count_b"] * Fraction(v["price_b"]),
    "sharing_equal": lambda v: Fraction(v["total"], v["people"]),
    "sharing_fraction": lambda v: Fraction(v["amount"], v["people"]),
    "travel_distance": lambda v: Fraction(v["speed"] * v["hours"]),
    "travel_time": lambda v: Fraction(v["distance"], v["speed"]),
    "travel_speed": lambda v: Fraction(v["distance"], v["hours"]),
    "ages": lambda v: Fraction(v["later_sum"] - 2 * v["years"], v["times"] + 1),
    "discount": lambda v: Fraction(v["price"]) * (100 - v["percent"]) / 100,
    "recipe_scaling": lambda v: Fraction(v["amount"] * v["wanted"], v["makes"]),
    "rectangle_area": lambda v: Fraction(v["length"] * v["width"]),
    "rectangle_perimeter": lambda v: Fraction(2 * (v["length"] + v["width"])),
}


def word_problem_value(sample: dict) -> Fraction:
    variables = sample["variables"]
    numbers_in_prompt = re.findall(r"\d+(?:\.\d+)?", sample["prompt"])
    for name, value in variables.items():
        assert str(value) in numbers_in_prompt, f"{name}={value} is not stated in: {sample['prompt']}"
    return WORD_FORMULAS[sample["template"]](variables)


def countdown_numbers_used(expression: str) -> list[int]:
    """The number literals of an expression built only from + - * / and parentheses."""
    tree = ast.parse(expression, mode="eval")
    used = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant):
            assert isinstance(node.value, int), expression
            used.append(node.value)
        elif isinstance(node, ast.BinOp):
            assert isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)), expression
        else:
            assert isinstance(node, (ast.Expression, ast.operator)), f"{ast.dump(node)} in {expression}"
    return used


def independent_answer(sample: dict) -> Fraction:
    """The gold value recomputed from the problem itself (countdown: its target)."""
    task = sample["task"]
    if task == "arithmetic":
        match = re.fullmatch(r"What is (.+)\?", sample["prompt"])
        return evaluate(match.group(1))
    if task == "word_problem":
        return word_problem_value(sample)
    if task == "linear_equation":
        equation = sample["prompt"].removeprefix("Solve for x: ")
        assert equation == sample["equation"]
        return solve_linear(equation)
    if task == "countdown":
        return Fraction(sample["target"])
    raise AssertionError(task)


def word_counts(text: str) -> set[int]:
    return {len(text.split()), len(re.findall(r"\b\w+\b", text))}


def satisfies(response: str, constraint: dict) -> bool:
    """Strictest reasonable reading of each schema constraint kind."""
    kind = constraint["kind"]
    if kind == "max_words":
        return max(word_counts(response)) <= constraint["n"]
    if kind == "min_words":
        return min(word_counts(response)) >= constraint["n"]
    if kind == "include_keywords":
        return all(re.search(rf"\b{re.escape(w)}\b", response) for w in constraint["words"])
    if kind == "exclude_words":
        return all(w.lower() not in response.lower() for w in constraint["words"])
    if kind == "num_bullets":
        return sum(line.lstrip().startswith(("- ", "* ")) for line in response.splitlines()) == constraint["n"]
    if kind == "lowercase":
        return response == response.lower() and any(c.isalpha() for c in response)
    if kind == "uppercase":
        return response == response.upper() and any(c.isalpha() for c in response)
    if kind == "start_with":
        return response.strip().startswith(constraint["text"])
    if kind == "end_with":
        return response.strip().endswith(constraint["text"])
    if kind == "no_commas":
        return "," not in response
    if kind == "num_paragraphs":
        return len([p for p in re.split(r"\n\s*\n", response.strip()) if p.strip()]) == constraint["n"]
    if kind == "json":
        try:
            json.loads(response)
        except json.JSONDecodeError:
            return False
        return True
    raise AssertionError(f"unknown kind {kind}")


def stated_in_prompt(prompt: str, constraint: dict) -> bool:
    kind = constraint["kind"]
    needles = {
        "max_words": lambda c: [f"at most {c['n']} words"],
        "min_words": lambda c: [f"at least {c['n']} words"],
        "include_keywords": lambda c: ["Include"] + [f"'{w}'" for w in c["words"]],
        "exclude_words": lambda c: ["Do not use"] + [f"'{w}'" for w in c["words"]],
        "num_bullets": lambda c: [f"exactly {c['n']} bullet points", "'- '"],
        "lowercase": lambda c: ["lowercase"],
        "uppercase": lambda c: ["capital letters"],
        "start_with": lambda c: [f"Start the response with '{c['text']}'"],
        "end_with": lambda c: [f"End the response with '{c['text']}'"],
        "no_commas": lambda c: ["commas"],
        "num_paragraphs": lambda c: [f"exactly {c['n']} paragraphs", "blank line"],
        "json": lambda c: ["JSON"],
    }[kind](constraint)
    return all(needle in prompt for needle in needles)


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def samples_by_level() -> dict[tuple[str, int], list[dict]]:
    """40 samples per task and level (30 for the slower-to-check instruction task)."""
    return {
        (task, level): TASKS[task](30 if task == "instruction" else 40, seed=11, difficulty=level)
        for task, level in TASK_LEVELS
    }


# ----------------------------------------------------------------------------- generators

@pytest.mark.parametrize("task,level", TASK_LEVELS)
def test_same_seed_gives_identical_samples(task, level, samples_by_level):
    again = TASKS[task](30 if task == "instruction" else 40, seed=11, difficulty=level)
    assert again == samples_by_level[(task, level)]


@pytest.mark.parametrize("task", list(TASKS))
def test_different_seeds_give_different_problems(task):
    first = {s["prompt"] for s in TASKS[task](20, seed=1)}
    second = {s["prompt"] for s in TASKS[task](20, seed=2)}
    assert len(first & second) < 5


@pytest.mark.parametrize("task,level", TASK_LEVELS)
def test_samples_follow_the_schema(task, level, samples_by_level):
    samples = samples_by_level[(task, level)]
    assert [s["id"] for s in samples] == [f"{task}-{i:06d}" for i in range(len(samples))]
    assert len({s["prompt"] for s in samples}) == len(samples)
    for s in samples:
        assert s["task"] == task and s["difficulty"] == level
        assert isinstance(s["prompt"], str) and s["prompt"].strip()
        assert isinstance(s["solution"], str) and s["solution"].strip()
        json.dumps(s)  # every sample must serialise as JSONL
        if task in MATH_TASKS:
            assert isinstance(s["answer"], str) and s["answer"].strip()
        if task == "countdown":
            assert s["verifier"] == "countdown"
            assert all(isinstance(n, int) for n in s["numbers"]) and isinstance(s["target"], int)
        elif task == "instruction":
            assert s["verifier"] == "instruction" and "answer" not in s
            assert s["constraints"] and {c["kind"] for c in s["constraints"]} <= CONSTRAINT_KINDS
        else:
            assert s["verifier"] == "accuracy"


@pytest.mark.parametrize("task,level", [(t, lv) for t, lv in TASK_LEVELS if t != "instruction"])
def test_gold_answers_match_independent_computation(task, level, samples_by_level):
    for s in samples_by_level[(task, level)]:
        value = independent_answer(s)
        if task == "countdown":
            used = countdown_numbers_used(s["answer"])
            assert Counter(used) == Counter(s["numbers"]), s
            assert evaluate(s["answer"]) == s["target"], s
            assert f"equals {s['target']}." in s["prompt"]
            assert ", ".join(map(str, s["numbers"])) in s["prompt"]
        else:
            assert Fraction(s["answer"]) == value, s


@pytest.mark.parametrize("task", MATH_TASKS)
def test_answer_strings_parse_as_numbers_for_math_verify(task):
    from math_verify import parse

    for s in TASKS[task](15, seed=3, difficulty=ALL_LEVELS[task][-1]):
        if task == "countdown":
            continue  # its answer is an expression, checked by the countdown verifier
        assert re.fullmatch(r"-?\d+(\.\d+)?(/\d+)?", s["answer"]), s["answer"]
        parsed = parse(s["answer"])
        assert parsed, s["answer"]
        assert abs(float(parsed[0]) - float(Fraction(s["answer"]))) < 1e-9


def test_arithmetic_levels_control_size_and_operators():
    for s in generate_arithmetic(50, seed=0, difficulty=1):
        assert re.fullmatch(r"What is \d \+ \d\?", s["prompt"]), s["prompt"]
    for level in (2, 3):
        assert all(int(s["answer"]) >= 0 for s in generate_arithmetic(50, seed=0, difficulty=level))
    hard = generate_arithmetic(50, seed=0, difficulty=5)
    assert any("÷" in s["prompt"] for s in hard) and any("×" in s["prompt"] for s in hard)
    assert all(evaluate(s["expression"]) == int(s["answer"]) for s in hard)


def test_linear_equation_answer_forms_per_level():
    assert all(Fraction(s["answer"]).denominator == 1 for s in generate_linear_equation(40, seed=0, difficulty=2))
    level3 = [s["answer"] for s in generate_linear_equation(40, seed=0, difficulty=3)]
    assert any("/" in a for a in level3)
    level4 = [s["answer"] for s in generate_linear_equation(40, seed=0, difficulty=4)]
    assert any("." in a for a in level4) and not any("/" in a for a in level4)


def test_linear_equation_steps_follow_from_their_stated_actions():
    for level in EQUATION_LEVELS:
        for s in generate_linear_equation(25, seed=5, difficulty=level):
            x = Fraction(s["answer"])
            steps = [line.split(": ", 1) for line in s["solution"].splitlines()
                     if not line.startswith(("Check", "So"))]
            assert steps and steps[-1][1] == f"x = {s['answer']}", s
            left, right = as_functions(s["equation"])
            for action, equation in steps:
                # The stated action applied to the previous equation gives this one (both sides linear in
                # x, so agreeing at two points means equal), and the root still satisfies it.
                expected_left, expected_right = apply_step(action, left, right)
                left, right = as_functions(equation)
                for point in (Fraction(0), Fraction(1)):
                    assert left(point) == expected_left(point) and right(point) == expected_right(point), (
                        action, equation, s)
                assert left(x) == right(x), (equation, s)
            checked, bad = check_numeric_equations(next(l for l in s["solution"].splitlines() if l.startswith("Check")))
            assert checked >= 1 and not bad, s


def test_word_problems_cover_fractions_and_decimals_at_level_3():
    answers = [s["answer"] for s in generate_word_problem(80, seed=0, difficulty=3)]
    assert any("/" in a for a in answers) and any("." in a for a in answers)
    assert len({s["template"] for s in generate_word_problem(80, seed=0, difficulty=3)}) >= 8
    assert len({s["prompt"].split()[0] for s in generate_word_problem(80, seed=0, difficulty=1)}) >= 5


@pytest.mark.parametrize("level", INSTRUCTION_LEVELS)
def test_instruction_reference_responses_satisfy_their_constraints(level, samples_by_level):
    for s in samples_by_level[("instruction", level)]:
        kinds = [c["kind"] for c in s["constraints"]]
        assert len(kinds) == len(set(kinds))
        assert not {"lowercase", "uppercase"} <= set(kinds)
        for constraint in s["constraints"]:
            assert satisfies(s["reference_response"], constraint), (constraint, s["reference_response"])
            assert stated_in_prompt(s["prompt"], constraint), (constraint, s["prompt"])


def test_instruction_constraint_count_grows_with_difficulty():
    def mean_count(level):
        samples = generate_instruction(40, seed=2, difficulty=level)
        return sum(len(s["constraints"]) for s in samples) / len(samples)

    assert mean_count(1) < mean_count(2) < mean_count(3)


def test_local_instruction_checker_rejects_violations():
    # The checker above must be able to fail, or the test using it proves nothing.
    assert not satisfies("one two three", {"kind": "max_words", "n": 2})
    assert not satisfies("- a\n- b", {"kind": "num_bullets", "n": 3})
    assert not satisfies("Hello, there", {"kind": "no_commas"})
    assert not satisfies("Rivers run", {"kind": "include_keywords", "words": ["river"]})
    assert not satisfies("{'a': 1}", {"kind": "json"})
    assert not satisfies("Very good", {"kind": "exclude_words", "words": ["very"]})


def test_bad_arguments_are_refused_clearly():
    with pytest.raises(ValueError, match=r"difficulty must be one of \[1, 2, 3, 4, 5\], got 9"):
        generate_arithmetic(3, seed=0, difficulty=9)
    with pytest.raises(ValueError, match="seed must be an int"):
        generate_countdown(3, seed="zero")
    # Single-digit sums: only 100 exist, so 150 distinct ones cannot be drawn.
    with pytest.raises(ValueError, match=r"only 100 distinct problems found at difficulty 1"):
        generate_arithmetic(150, seed=0, difficulty=1)


# ----------------------------------------------------------------------------- splits and mixes

@pytest.mark.parametrize("task", list(TASKS))
def test_splits_are_disjoint_deterministic_and_numbered(task):
    train, test = make_splits(task, 60, 20, seed=4)
    assert len(train) == 60 and len(test) == 20
    assert not {s["prompt"] for s in train} & {s["prompt"] for s in test}
    assert [s["id"] for s in test] == [f"{task}-test-{i:06d}" for i in range(20)]
    assert train[17]["id"] == f"{task}-train-000017"
    assert make_splits(task, 60, 20, seed=4) == (train, test)
    assert make_splits(task, 60, 20, seed=5).test != test
    # The held-out set does not depend on how much training data is asked for.
    assert make_splits(task, 5, 20, seed=4).test == test


def test_split_membership_is_a_property_of_the_prompt():
    splits = make_splits("arithmetic", 40, 15, seed=0, difficulty=1)
    assert all(tasks.split_of(s["prompt"]) == "test" for s in splits.test)
    assert all(tasks.split_of(s["prompt"]) == "train" for s in splits.train)
    # So separately built train and test sets, even at other seeds and sizes, never meet.
    other_train = build({"arithmetic": {"n": 70, "difficulty": 1}}, seed=9, split="train")
    assert not {s["prompt"] for s in other_train} & {s["prompt"] for s in splits.test}


def test_build_mixes_tasks_deterministically_without_overlap():
    mix = {"arithmetic": {"n": 30, "difficulty": 1}, "countdown": 10, "instruction": 5}
    train = build(mix, seed=3, split="train")
    assert build(mix, seed=3, split="train") == train
    assert Counter(s["task"] for s in train) == {"arithmetic": 30, "countdown": 10, "instruction": 5}
    assert len({s["id"] for s in train}) == len(train)
    assert [s["task"] for s in train] != sorted(s["task"] for s in train)  # shuffled
    test = build([{"task": "arithmetic", "n": 12, "difficulty": 1}, ("countdown", 7)], seed=3, split="test")
    assert not {s["prompt"] for s in train} & {s["prompt"] for s in test}
    assert all(re.fullmatch(r"(arithmetic|countdown)-test-\d{6}", s["id"]) for s in test)


def test_build_two_levels_of_one_task_never_repeat_a_prompt():
    samples = build([{"task": "arithmetic", "n": 60, "difficulty": 1},
                     {"task": "arithmetic", "n": 60, "difficulty": 2}], seed=0, split="train", shuffle=False)
    assert len({s["prompt"] for s in samples}) == 120
    assert [s["id"] for s in samples] == [f"arithmetic-train-{i:06d}" for i in range(120)]
    assert Counter(s["difficulty"] for s in samples) == {1: 60, 2: 60}


def test_build_rejects_bad_mixes():
    with pytest.raises(ValueError, match="unknown task 'arithmatic'; known tasks: arithmetic"):
        build({"arithmatic": 3}, seed=0)
    with pytest.raises(ValueError, match="unknown keys"):
        build({"arithmetic": {"n": 3, "level": 2}}, seed=0)
    with pytest.raises(ValueError, match="split must be one of"):
        build({"arithmetic": 3}, seed=0, split="validation")


# ----------------------------------------------------------------------------- demonstrations

_R1 = re.compile(r"<think>\n(?P<think>.+)\n</think>\n<answer>\n(?P<answer>.+)\n</answer>", re.DOTALL)


@pytest.mark.parametrize("task,level", TASK_LEVELS)
def test_demonstrations_have_correct_steps_in_r1_format(task, level, samples_by_level):
    for s in samples_by_level[(task, level)]:
        demo = make_demonstration(s)
        assert [m["role"] for m in demo["messages"]] == ["user", "assistant"]
        assert demo["messages"][0]["content"] == s["prompt"]
        content = demo["messages"][1]["content"]
        match = _R1.fullmatch(content)
        assert match, content
        for tag in ("<think>", "</think>", "<answer>", "</answer>"):
            assert content.count(tag) == 1, content
        think, answer = match["think"], match["answer"]
        if task == "instruction":
            assert answer == s["reference_response"]
            assert all(satisfies(answer, c) for c in s["constraints"])
            continue
        gold = independent_answer(s)
        assert last_number(think) == gold, think
        if task == "countdown":
            assert evaluate(answer) == s["target"] and Counter(countdown_numbers_used(answer)) == Counter(s["numbers"])
        else:
            assert Fraction(answer) == gold
        if task != "linear_equation":  # its algebra lines are checked by substitution above
            checked, bad = check_numeric_equations(think)
            assert checked >= 1 and not bad, (bad, think)
            assert not check_column_notes(think), think


def test_numeric_step_checker_catches_wrong_arithmetic():
    assert check_numeric_equations("Cost: 3 × 2.45 = 7.35\nChange: 10 - 7.35 = 2.65.") == (2, [])
    assert check_numeric_equations("ones: 8 + 7 = 16, write 6")[1] == ["8 + 7 = 16"]
    assert check_numeric_equations("Subtract 5 from both sides: 3x = 15") == (0, [])
    assert check_column_notes("tens: 5 + 6 + 1 = 12, write 2, carry 1\nones: 3 + 4 = 7, write 7") == []
    assert check_column_notes("ones: 8 + 7 = 15, write 5, carry 2") == ["= 15, write 5, carry 2"]


def test_demonstration_options_and_errors():
    sample = generate_arithmetic(1, seed=0)[0]
    demo = make_demonstration(sample, system_prompt="Think, then answer.")
    assert demo["messages"][0] == {"role": "system", "content": "Think, then answer."}
    assert demo["id"] == sample["id"] and demo["task"] == "arithmetic"
    with pytest.raises(ValueError, match="no 'solution'"):
        make_demonstration({k: v for k, v in sample.items() if k != "solution"})
    with pytest.raises(ValueError, match="must not contain think/answer tags"):
        make_demonstration({**sample, "answer": "<answer>5</answer>"})
    assert len(tasks.make_demonstrations(generate_countdown(4, seed=0))) == 4
