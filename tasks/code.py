"""Small function-writing tasks (MBPP style) with hidden tests, checked by running the answer's code.

Each problem family draws its constants (letters to count, a base, fizzbuzz divisors and words, a shift,
...) from the seeded stream, so a family yields many distinct prompts. A sample has ``verifier: "code"``,
``tests`` as assert statements (the first one is the example shown in the prompt), ``reference_response``
(the reference solution in a fenced python block, used as the demonstration's answer) and ``solution``
(how the function works, for the think block). Expected values are computed by running the reference
solution here, on the host: it is our own code.

Sizes: level 1 holds thousands of distinct problems; levels 2 and 3 about 120 and 85 (a fifth of them in
the test split), so ask those levels for tens or hundreds of samples, not thousands (asking for more
than exist is a clear error from :func:`tasks.sampling.draw_samples`).
"""
from __future__ import annotations

import random
import string
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from .sampling import check_difficulty, draw_samples

DEFAULT_DIFFICULTY = 1
TESTS_PER_PROBLEM = 5
_MAX_CASE_DRAWS = 200  # distinct test arguments are easy to find; this only guards against a tiny space
_WORDS = ("apple", "tree", "sky", "river", "stone", "cloud", "fox", "moon", "sun", "leaf", "road", "a", "is",
          "blue", "green", "cat", "dog", "bird", "sea", "hill")
_FIZZ_WORDS = ("Fizz", "Buzz", "Bang", "Pop", "Zap", "Boom", "Ding", "Whizz")
_ORDINALS = {1: "1st", 2: "2nd", 3: "3rd"}


@dataclass(frozen=True)
class CodeProblem:
    """One function to write: what it does, a correct solution, and the arguments of its tests."""

    name: str
    params: str  # the parameter list, e.g. "n" or "xs"
    statement: str  # completes "Write a Python function `name(params)` that ..."
    source: str  # the reference solution
    plan: str  # how the solution works, in words
    draw_args: Callable[[random.Random], tuple]  # one test's arguments


def generate_code(
    n: int, *, seed: int, difficulty: int = DEFAULT_DIFFICULTY, split: str | None = None,
    exclude: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """``n`` distinct function-writing problems with ``tests`` (assert statements) and a reference solution."""
    check_difficulty("code", difficulty, LEVELS)
    return draw_samples("code", make_code_problem, n, seed=seed, difficulty=difficulty, split=split, exclude=exclude)


def make_code_problem(rng: random.Random, difficulty: int) -> dict[str, Any]:
    """One sample: a family of this level drawn at random, its constants drawn, tests computed."""
    problem = rng.choice(LEVELS[difficulty])(rng)
    # The example shown in the prompt is drawn from a stream seeded by the problem itself, so the prompt
    # (which decides train or test) is a function of the problem: one problem never lands in both splits
    # with different examples. The hidden tests come from the main stream.
    example = problem.draw_args(random.Random(f"r1-recipe/code-example/{problem.statement}"))
    cases = [example]
    for _ in range(_MAX_CASE_DRAWS):
        if len(cases) == TESTS_PER_PROBLEM:
            break
        args = problem.draw_args(rng)
        if args not in cases:
            cases.append(args)
    function = _compile(problem.source, problem.name)
    results = [function(*args) for args in cases]
    calls = [f"{problem.name}({', '.join(map(repr, args))})" for args in cases]
    example_call, example_result = calls[0], results[0]
    prompt = (
        f"Write a Python function `{problem.name}({problem.params})` that {problem.statement}.\n\n"
        f"For example, `{example_call}` returns `{example_result!r}`.\n\n"
        "Answer with the complete function in a ```python code block."
    )
    return {
        "prompt": prompt,
        "verifier": "code",
        "solution": f"{problem.plan}\nCheck the example: {example_call} gives {example_result!r}, as asked.",
        "tests": [f"assert {call} == {result!r}" for call, result in zip(calls, results)],
        "reference_response": f"```python\n{problem.source.strip()}\n```",
    }


def _compile(source: str, name: str) -> Callable:
    namespace: dict[str, Any] = {}
    exec(compile(source, f"<reference {name}>", "exec"), namespace)  # our own reference code, not a model's
    return namespace[name]


def _int_list(rng: random.Random, low: int, high: int, max_len: int = 8, min_len: int = 0) -> list[int]:
    return [rng.randint(low, high) for _ in range(rng.randint(min_len, max_len))]


def _sentence(rng: random.Random, max_words: int = 6) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, max_words)))


# ----------------------------------------------------------------------------- level 1

def _count_letters(rng: random.Random) -> CodeProblem:
    letters = "".join(sorted(rng.sample(string.ascii_lowercase, rng.randint(2, 4))))
    alphabet = letters * 3 + letters.upper() + "xyz bq"
    return CodeProblem(
        "count_letters", "s",
        f"returns how many characters of the string `s` are one of the lowercase letters "
        f"{', '.join(letters)} (uppercase letters do not count)",
        f"def count_letters(s):\n    wanted = set({letters!r})\n    return sum(1 for ch in s if ch in wanted)\n",
        f"Put the wanted letters {', '.join(letters)} in a set. Walk through s once and add 1 for every character "
        "that is in the set; an uppercase letter is a different character, so it is not counted.",
        lambda r: ("".join(r.choice(alphabet) for _ in range(r.randint(1, 14))),),
    )


def _digit_power_sum(rng: random.Random) -> CodeProblem:
    base, power = rng.randint(2, 10), rng.randint(1, 3)
    raised = f", each digit raised to the power {power}" if power > 1 else ""
    term = "n % base" if power == 1 else f"(n % base) ** {power}"
    return CodeProblem(
        "digit_power_sum", "n",
        f"returns the sum of the digits of the non-negative integer `n` written in base {base}{raised}",
        f"def digit_power_sum(n):\n    base = {base}\n    total = 0\n    while n > 0:\n        total += {term}\n"
        "        n //= base\n    return total\n",
        f"Take the base-{base} digits from the right: n % {base} is the last digit and n // {base} drops it. Add "
        f"each digit{raised} to a running total until n reaches 0; for n = 0 the sum is 0.",
        lambda r: (r.randint(0, 10 ** r.randint(1, 6)),),
    )


def _fizzbuzz(rng: random.Random) -> CodeProblem:
    a, b = rng.sample(range(2, 10), 2)
    word_a, word_b = rng.sample(_FIZZ_WORDS, 2)
    return CodeProblem(
        "fizzbuzz", "n",
        f'returns a list of strings for the numbers 1 to `n`: "{word_a}{word_b}" for multiples of both {a} and '
        f'{b}, "{word_a}" for other multiples of {a}, "{word_b}" for other multiples of {b}, and the number '
        "itself as a string otherwise",
        f"def fizzbuzz(n):\n    result = []\n    for i in range(1, n + 1):\n"
        f"        if i % {a} == 0 and i % {b} == 0:\n            result.append({word_a + word_b!r})\n"
        f"        elif i % {a} == 0:\n            result.append({word_a!r})\n"
        f"        elif i % {b} == 0:\n            result.append({word_b!r})\n"
        "        else:\n            result.append(str(i))\n    return result\n",
        f"Loop i from 1 to n. Test the combined case first (divisible by both {a} and {b}), then {a} alone, then "
        f"{b} alone; otherwise append the number itself as text.",
        lambda r: (r.randint(1, a * b + 3),),
    )


def _reverse_words(rng: random.Random) -> CodeProblem:
    separator = rng.choice((" ", "-", "_", ", ", " | ", "/", "+", "::"))
    min_len = rng.randint(0, 3)
    kept = f"that have at least {min_len} letters " if min_len > 1 else ""
    filter_ = f" if len(w) >= {min_len}" if min_len > 1 else ""
    return CodeProblem(
        "reverse_words", "s",
        f"returns the words of `s` (split on whitespace) {kept}in reverse order, joined by {separator!r}",
        f"def reverse_words(s):\n    words = [w for w in s.split(){filter_}]\n"
        f"    return {separator!r}.join(reversed(words))\n",
        f"Split s on whitespace{', keep the words with at least ' + str(min_len) + ' letters' if kept else ''}, "
        f"reverse their order and join them with {separator!r}.",
        lambda r: (_sentence(r),),
    )


def _caesar(rng: random.Random) -> CodeProblem:
    shift, forward = rng.randint(1, 25), rng.random() < 0.5
    step = shift if forward else 26 - shift
    direction = "forward" if forward else "back"
    return CodeProblem(
        "caesar", "s",
        f"shifts every lowercase letter of `s` {shift} places {direction} in the alphabet, wrapping around "
        "between z and a; all other characters stay as they are",
        "def caesar(s):\n    out = []\n    for ch in s:\n        if 'a' <= ch <= 'z':\n"
        f"            out.append(chr((ord(ch) - ord('a') + {step}) % 26 + ord('a')))\n"
        "        else:\n            out.append(ch)\n    return ''.join(out)\n",
        f"For a lowercase letter take its position 0-25, add {step} (moving {shift} {direction} is the same as "
        f"{step} forward modulo 26), wrap with % 26 and turn it back into a letter; copy other characters.",
        lambda r: (_sentence(r, 3) + r.choice(("", "!", " 42", "?")),),
    )


def _count_multiples(rng: random.Random) -> CodeProblem:
    d, e = rng.sample(range(2, 10), 2)
    return CodeProblem(
        "count_multiples", "xs",
        f"returns how many integers in the list `xs` are divisible by {d} but not by {e}",
        f"def count_multiples(xs):\n    return sum(1 for x in xs if x % {d} == 0 and x % {e} != 0)\n",
        f"Count the x in xs with x % {d} == 0 and x % {e} != 0 (Python's % is exact for negative numbers too).",
        lambda r: (_int_list(r, -30, 90, 9, 1),),
    )


def _clip_values(rng: random.Random) -> CodeProblem:
    low, high = rng.randint(-10, 0), rng.randint(1, 10)
    return CodeProblem(
        "clip_values", "xs",
        f"returns a new list in which every number of `xs` below {low} is replaced by {low} and every number "
        f"above {high} by {high}",
        f"def clip_values(xs):\n    return [min(max(x, {low}), {high}) for x in xs]\n",
        f"For each x, max(x, {low}) lifts values below {low} and min(..., {high}) lowers values above {high}.",
        lambda r: (_int_list(r, -20, 20, 8, 1),),
    )


def _every_kth(rng: random.Random) -> CodeProblem:
    k = rng.randint(2, 5)
    start = rng.randint(0, k - 1)
    return CodeProblem(
        "every_kth", "xs",
        f"returns a list of every {_ORDINALS.get(k, f'{k}th')} element of the list `xs`, starting with the "
        f"element at index {start}",
        f"def every_kth(xs):\n    return xs[{start}::{k}]\n",
        f"A slice does it: start at index {start} and step by {k}, xs[{start}::{k}].",
        lambda r: (_int_list(r, 0, 50, 12),),
    )


# ----------------------------------------------------------------------------- level 2

def _window(rng: random.Random) -> CodeProblem:
    width = rng.randint(2, 5)
    op, noun = rng.choice((("sum", "sum"), ("max", "largest value"), ("min", "smallest value")))
    return CodeProblem(
        "window", "xs",
        f"returns a list with the {noun} of every run of {width} consecutive elements of `xs`, in order (a "
        f"list shorter than {width} gives an empty list)",
        f"def window(xs):\n    return [{op}(xs[i:i + {width}]) for i in range(len(xs) - {width} + 1)]\n",
        f"There are len(xs) - {width} + 1 windows; window i is xs[i:i + {width}] and contributes its {noun}. "
        "When the list is too short the range is empty.",
        lambda r: (_int_list(r, -9, 30, 9),),
    )


def _rotate(rng: random.Random) -> CodeProblem:
    k, left = rng.randint(1, 9), rng.random() < 0.5
    body = "xs[k:] + xs[:k]" if left else "xs[-k:] + xs[:-k]"
    return CodeProblem(
        "rotate", "xs",
        f"returns the list `xs` rotated {k} places to the {'left' if left else 'right'} (elements that fall "
        "off one end come back at the other); an empty list stays empty",
        f"def rotate(xs):\n    if not xs:\n        return []\n    k = {k} % len(xs)\n"
        f"    return {body}\n",
        f"Rotating by the list length changes nothing, so use k = {k} % len(xs); then the result is {body}. "
        "Handle the empty list first to avoid dividing by zero.",
        lambda r: (_int_list(r, 0, 9, 7, 1),),
    )


def _encode_runs(rng: random.Random) -> CodeProblem:
    count_first, skip_ones = rng.random() < 0.5, rng.random() < 0.5
    count = "(str(count) if count > 1 else '')" if skip_ones else "str(count)"
    part = f"{count} + s[i]" if count_first else f"s[i] + {count}"
    layout = "the count followed by the character" if count_first else "the character followed by the count"
    ones = ", leaving the count out when it is 1" if skip_ones else ""
    return CodeProblem(
        "encode_runs", "s",
        f"run-length encodes the string `s`: each run of equal characters becomes {layout}{ones}",
        "def encode_runs(s):\n    parts = []\n    i = 0\n    while i < len(s):\n        j = i\n"
        "        while j < len(s) and s[j] == s[i]:\n            j += 1\n        count = j - i\n"
        f"        parts.append({part})\n        i = j\n    return ''.join(parts)\n",
        f"Scan with two indices: from i, move j while s[j] equals s[i]; the run length is j - i. Write {layout}"
        f"{ones}, then continue from j.",
        lambda r: ("".join(r.choice("aab") * r.randint(1, 4) for _ in range(r.randint(1, 4))),),
    )


def _kth_distinct(rng: random.Random) -> CodeProblem:
    k, largest = rng.randint(1, 4), rng.random() < 0.5
    word = "largest" if largest else "smallest"
    return CodeProblem(
        "kth_distinct", "xs",
        f"returns the {_ORDINALS.get(k, f'{k}th')} {word} distinct value in the list `xs`, or None when `xs` "
        f"has fewer than {k} distinct values",
        f"def kth_distinct(xs):\n    values = sorted(set(xs){', reverse=True' if largest else ''})\n"
        f"    return values[{k - 1}] if len(values) >= {k} else None\n",
        f"Remove duplicates with set(), sort {'from largest to smallest' if largest else 'ascending'}, and "
        f"take index {k - 1} if there are at least {k} values; otherwise None.",
        lambda r: (_int_list(r, 0, 12, 7),),
    )


def _count_pairs(rng: random.Random) -> CodeProblem:
    target = rng.randint(0, 20)
    return CodeProblem(
        "count_pairs", "xs",
        f"returns how many pairs of positions i < j in the list `xs` have xs[i] + xs[j] == {target}",
        "def count_pairs(xs):\n    count = 0\n    for i in range(len(xs)):\n        for j in range(i + 1, len(xs)):\n"
        f"            if xs[i] + xs[j] == {target}:\n                count += 1\n    return count\n",
        f"Try every pair of positions i < j with two loops and count those whose values add up to {target}.",
        lambda r: (_int_list(r, -2, target + 2, 8),),
    )


def _palindrome(rng: random.Random) -> CodeProblem:
    ignore_case, ignore_spaces = rng.random() < 0.5, rng.random() < 0.5
    steps = (["s = s.lower()"] if ignore_case else []) + (["s = s.replace(' ', '')"] if ignore_spaces else [])
    ignoring = [w for w, on in (("case", ignore_case), ("spaces", ignore_spaces)) if on]
    return CodeProblem(
        "is_palindrome", "s",
        "returns True if the string `s` reads the same forwards and backwards"
        + (f" when {' and '.join(ignoring)} {'are' if len(ignoring) > 1 else 'is'} ignored" if ignoring
           else " (every character counts)")
        + ", else False",
        "def is_palindrome(s):\n" + "".join(f"    {step}\n" for step in steps) + "    return s == s[::-1]\n",
        ("First normalise: " + "; ".join(steps) + ". " if steps else "") + "Then compare s with s[::-1].",
        lambda r: (r.choice(("Abba", "abba", "a b a", "Never odd or even", "step on no pets",
                                             "Top spot", "abc", "ab ba", "Ab a", "xyz zyx", "racecar", "Race car",
                                             "noon", "No on")),),
    )


def _word_counts(rng: random.Random) -> CodeProblem:
    min_len = rng.randint(1, 4)
    return CodeProblem(
        "word_counts", "s",
        f"returns a dictionary mapping each lowercased word of `s` (split on whitespace) that has at least "
        f"{min_len} letters to the number of times it occurs",
        "def word_counts(s):\n    counts = {}\n    for word in s.lower().split():\n"
        f"        if len(word) >= {min_len}:\n            counts[word] = counts.get(word, 0) + 1\n    return counts\n",
        f"Lowercase s, split it, skip words shorter than {min_len} and count the rest in a dictionary with "
        "counts.get(word, 0) + 1.",
        lambda r: (" ".join(r.choice(_WORDS + ("Sky", "Fox", "TREE")) for _ in range(r.randint(1, 7))),),
    )


def _sum_multiples_below(rng: random.Random) -> CodeProblem:
    a, b = sorted(rng.sample(range(2, 10), 2))
    return CodeProblem(
        "sum_multiples", "n",
        f"returns the sum of all positive integers below `n` that are multiples of {a} or {b} (each counted "
        "once)",
        f"def sum_multiples(n):\n    return sum(i for i in range(1, n) if i % {a} == 0 or i % {b} == 0)\n",
        f"Go through 1 .. n - 1 and add every i divisible by {a} or by {b}; using one condition with 'or' "
        "counts the common multiples once.",
        lambda r: (r.randint(0, 200),),
    )


def _to_base(rng: random.Random) -> CodeProblem:
    base = rng.randint(2, 16)
    return CodeProblem(
        "to_base", "n",
        f"returns the list of digits (as integers, most significant first) of the non-negative integer `n` "
        f"written in base {base}; 0 gives [0]",
        f"def to_base(n):\n    if n == 0:\n        return [0]\n    digits = []\n    while n > 0:\n"
        f"        digits.append(n % {base})\n        n //= {base}\n    return digits[::-1]\n",
        f"Repeatedly take n % {base} (the last digit) and divide n by {base}; that yields the digits from the "
        "right, so reverse them at the end. Zero is the special case [0].",
        lambda r: (r.randint(0, 10 ** r.randint(1, 5)),),
    )


def _chunk(rng: random.Random) -> CodeProblem:
    size, keep_tail = rng.randint(2, 6), rng.random() < 0.5
    stop = "len(xs)" if keep_tail else f"len(xs) - {size} + 1"
    return CodeProblem(
        "chunk", "xs",
        f"splits the list `xs` into consecutive pieces of {size} elements and returns the list of pieces"
        + ("; the last piece may be shorter" if keep_tail else "; a shorter piece left at the end is dropped"),
        f"def chunk(xs):\n    return [xs[i:i + {size}] for i in range(0, {stop}, {size})]\n",
        f"Pieces start at 0, {size}, {2 * size}, ...; piece i is xs[i:i + {size}]. "
        + ("Starting positions run up to the end, so the last piece can be short."
           if keep_tail else
           f"Only start a piece when {size} elements remain, so the range stops at len(xs) - {size} + 1."),
        lambda r: (_int_list(r, 0, 9, 13),),
    )


# ----------------------------------------------------------------------------- level 3

def _balanced(rng: random.Random) -> CodeProblem:
    kinds = ("()", "[]", "{}", "<>")
    chosen = set(rng.sample(kinds, rng.randint(1, 4)))
    pairs = [p for p in kinds if p in chosen]  # canonical order: one prompt per set of pairs
    closers = {p[1]: p[0] for p in pairs}
    brackets = "".join(pairs)

    def draw(r: random.Random) -> tuple:
        if r.random() < 0.5:
            return (_nested(r, pairs, r.randint(1, 4)),)
        return ("".join(r.choice(brackets + "ab") for _ in range(r.randint(1, 8))),)

    return CodeProblem(
        "balanced", "s",
        f"returns True if the brackets {' '.join(pairs)} in the string `s` are balanced and properly nested, "
        "else False (all other characters are ignored)",
        f"def balanced(s):\n    closers = {closers!r}\n    stack = []\n    for ch in s:\n"
        "        if ch in closers.values():\n            stack.append(ch)\n        elif ch in closers:\n"
        "            if not stack or stack.pop() != closers[ch]:\n                return False\n    return not stack\n",
        "Use a stack: push every opening bracket; a closing bracket must match the opening bracket on top of the "
        "stack (pop it), otherwise the string is not balanced. At the end the stack must be empty.",
        draw,
    )


def _nested(rng: random.Random, pairs: list[str], depth: int) -> str:
    if depth == 0:
        return rng.choice(("", "x"))
    pair = rng.choice(pairs)
    return pair[0] + _nested(rng, pairs, depth - 1) + pair[1] + _nested(rng, pairs, rng.randint(0, depth - 1))


def _two_sum(rng: random.Random) -> CodeProblem:
    target = rng.randint(0, 30)
    return CodeProblem(
        "two_sum", "xs",
        f"returns the pair of indices (i, j) with i < j and xs[i] + xs[j] == {target} whose j is smallest "
        "(and then whose i is smallest), as a tuple, or None when there is no such pair",
        "def two_sum(xs):\n    for j in range(len(xs)):\n        for i in range(j):\n"
        f"            if xs[i] + xs[j] == {target}:\n                return (i, j)\n    return None\n",
        "Let j run from left to right and, for each j, i from 0 up to j - 1: the first pair found has the "
        "smallest j and then the smallest i. Return it as a tuple; None if the loops finish.",
        lambda r: (_int_list(r, 0, target, 7, 2),),
    )


def _longest_run(rng: random.Random) -> CodeProblem:
    relation, test = rng.choice((("equal", "xs[i] == xs[i - 1]"), ("strictly increasing", "xs[i - 1] < xs[i]"),
                                 ("non-decreasing", "xs[i - 1] <= xs[i]")))
    return CodeProblem(
        "longest_run", "xs",
        f"returns the length of the longest stretch of consecutive elements of the list `xs` in which each "
        f"element is {relation} {'to' if relation == 'equal' else 'compared with'} the one before (0 for an "
        "empty list)",
        "def longest_run(xs):\n    if not xs:\n        return 0\n    best = current = 1\n"
        f"    for i in range(1, len(xs)):\n        current = current + 1 if {test} else 1\n"
        "        best = max(best, current)\n    return best\n",
        f"Walk once, keeping the length of the current stretch: it grows by 1 when {test}, else restarts at 1. "
        "The answer is the largest length seen; an empty list gives 0.",
        lambda r: (_int_list(r, 0, 5, 10),),
    )


def _flatten(rng: random.Random) -> CodeProblem:
    drop_none = rng.random() < 0.5

    def nested(r: random.Random, depth: int) -> list:
        return [nested(r, depth - 1) if depth and r.random() < 0.3 else r.choice((1, 2, 3, None, "a", 7))
                for _ in range(r.randint(0, 4))]

    otherwise = "elif x is not None:" if drop_none else "else:"
    return CodeProblem(
        "flatten", "xs",
        "returns a flat list of all the items of the arbitrarily nested list `xs` that are not lists, in order"
        + (", leaving out None" if drop_none else ""),
        "def flatten(xs):\n    flat = []\n    for x in xs:\n        if isinstance(x, list):\n"
        f"            flat.extend(flatten(x))\n        {otherwise}\n            flat.append(x)\n    return flat\n",
        "Recurse: a list item is flattened by the same function and its items are appended; any other item is "
        "appended directly" + (" unless it is None." if drop_none else "."),
        lambda r: (nested(r, 3),),
    )


def _roman(rng: random.Random) -> CodeProblem:
    return CodeProblem(
        "to_roman", "n",
        "returns the Roman numeral of the integer `n` (1 <= n <= 3999) as a string, using subtractive forms "
        "such as IV, IX, XL, XC, CD and CM",
        "def to_roman(n):\n    values = [(1000, 'M'), (900, 'CM'), (500, 'D'), (400, 'CD'), (100, 'C'), (90, 'XC'),\n"
        "              (50, 'L'), (40, 'XL'), (10, 'X'), (9, 'IX'), (5, 'V'), (4, 'IV'), (1, 'I')]\n"
        "    out = []\n    for value, numeral in values:\n        while n >= value:\n"
        "            out.append(numeral)\n            n -= value\n    return ''.join(out)\n",
        "List the values with their numerals from largest to smallest, including the subtractive pairs; greedily "
        "take the largest value that still fits and append its numeral until n is 0.",
        lambda r: (r.randint(1, 3999),),
    )


def _next_with_digit_sum(rng: random.Random) -> CodeProblem:
    target = rng.randint(1, 30)
    return CodeProblem(
        "next_with_digit_sum", "n",
        f"returns the smallest integer greater than `n` (n >= 0) whose decimal digits add up to {target}",
        "def next_with_digit_sum(n):\n    m = n + 1\n"
        f"    while sum(int(d) for d in str(m)) != {target}:\n        m += 1\n    return m\n",
        f"Try n + 1, n + 2, ... and stop at the first number whose digit sum is {target}; one always exists "
        "(nines and one more digit reach any sum).",
        lambda r: (r.randint(0, 5000),),
    )


def _prime_factors(rng: random.Random) -> CodeProblem:
    kind = rng.choice(("all", "distinct", "count"))
    result = {"all": "factors", "distinct": "sorted(set(factors))", "count": "len(factors)"}[kind]
    what = {
        "all": "the list of prime factors of `n`, smallest first, each repeated as often as it divides `n`",
        "distinct": "the sorted list of the distinct prime factors of `n`",
        "count": "how many prime factors `n` has, counted with repetition",
    }[kind]
    return CodeProblem(
        "prime_factors", "n",
        f"returns {what} (n >= 2)",
        "def prime_factors(n):\n    factors = []\n    d = 2\n    while d * d <= n:\n        while n % d == 0:\n"
        "            factors.append(d)\n            n //= d\n        d += 1\n    if n > 1:\n"
        f"        factors.append(n)\n    return {result}\n",
        "Trial division: divide out 2 as often as possible, then 3, 4, ... while d * d <= n (a composite d "
        "never divides, its primes are gone); whatever is left above 1 is a prime factor too.",
        lambda r: (r.randint(2, 5000),),
    )


LEVELS: dict[int, tuple[Callable[[random.Random], CodeProblem], ...]] = {
    1: (_count_letters, _digit_power_sum, _fizzbuzz, _reverse_words, _caesar, _count_multiples, _clip_values,
        _every_kth),
    2: (_window, _rotate, _encode_runs, _kth_distinct, _count_pairs, _palindrome, _word_counts,
        _sum_multiples_below, _to_base, _chunk),
    3: (_balanced, _two_sum, _longest_run, _flatten, _roman, _next_with_digit_sum, _prime_factors),
}
