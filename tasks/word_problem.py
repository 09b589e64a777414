"""Templated word problems (shopping, sharing, travel, ages, discounts, recipes, rectangles).

Each template is a small function ``(rng, difficulty) -> WordProblem`` that draws its numbers first and
writes the question from them, so the gold answer is computed, never typed. Level 1 keeps to one or two
whole-number steps; level 2 adds more templates and bigger numbers; level 3 brings cents, fractions and
decimals. Every sample keeps ``template`` and ``variables`` (the drawn quantities) so a checker can
recompute the answer on its own.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Iterable

from . import vocabulary as vocab
from .numbers import format_money, format_number
from .sampling import check_difficulty, draw_samples

LEVELS = (1, 2, 3)
DEFAULT_DIFFICULTY = 2


@dataclass
class WordProblem:
    template: str
    prompt: str
    answer: Fraction
    steps: list[str]
    variables: dict[str, Any]
    prefer_decimal: bool = True  # money and hours read best as 2.5; fractions of a pizza as 3/4


def generate_word_problem(
    n: int, *, seed: int, difficulty: int = DEFAULT_DIFFICULTY, split: str | None = None,
    exclude: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """``n`` distinct word problems with integer, fraction (``3/4``) or decimal (``2.5``) answers."""
    check_difficulty("word_problem", difficulty, LEVELS)
    return draw_samples(
        "word_problem", make_word_problem, n, seed=seed, difficulty=difficulty, split=split, exclude=exclude
    )


def make_word_problem(rng: random.Random, difficulty: int) -> dict[str, Any]:
    """One word problem from a template allowed at ``difficulty``."""
    templates = [make for make, lowest in TEMPLATES if lowest <= difficulty]
    problem = rng.choice(templates)(rng, difficulty)
    answer = format_number(problem.answer, prefer_decimal=problem.prefer_decimal)
    return {
        "prompt": problem.prompt,
        "answer": answer,
        "verifier": "accuracy",
        "solution": "\n".join(problem.steps + [f"So the answer is {answer}."]),
        "template": problem.template,
        "variables": problem.variables,
    }


def _decimal(value: Fraction) -> str:
    """``2.5`` where the value has a finite decimal expansion, else ``p/q``."""
    return format_number(value, prefer_decimal=True)


def _price(rng: random.Random, low: int, high: int, difficulty: int) -> Fraction:
    """A whole-dollar price, or at level 3 one with cents in steps of 5."""
    if difficulty < 3:
        return Fraction(rng.randint(low, high))
    return Fraction(rng.randint(low * 20, high * 20 - 1), 20)


def shopping_change(rng: random.Random, difficulty: int) -> WordProblem:
    name = rng.choice(vocab.NAMES)
    item, low, high = rng.choice(vocab.SHOP_ITEMS)
    count = rng.randint(2, 4 if difficulty == 1 else 9)
    price = _price(rng, low, high, difficulty)
    cost = count * price
    bill = next(b for b in (5, 10, 20, 50, 100, 200) if b > cost)
    change = bill - cost
    return WordProblem(
        template="shopping_change",
        prompt=(
            f"{name} buys {count} {item} for ${format_money(price)} each and pays with a ${bill} bill. "
            f"How much change does {name} get, in dollars?"
        ),
        answer=change,
        steps=[
            f"Cost of the {item}: {count} × {format_money(price)} = {format_money(cost)}",
            f"Change from the ${bill} bill: {bill} - {format_money(cost)} = {format_money(change)}",
        ],
        variables={"count": count, "price": format_money(price), "bill": bill},
    )


def shopping_total(rng: random.Random, difficulty: int) -> WordProblem:
    name = rng.choice(vocab.NAMES)
    (item_a, low_a, high_a), (item_b, low_b, high_b) = rng.sample(vocab.SHOP_ITEMS, 2)
    count_a, count_b = (rng.randint(2, 5 if difficulty == 1 else 12) for _ in range(2))
    price_a, price_b = _price(rng, low_a, high_a, difficulty), _price(rng, low_b, high_b, difficulty)
    cost_a, cost_b = count_a * price_a, count_b * price_b
    return WordProblem(
        template="shopping_total",
        prompt=(
            f"{name} buys {count_a} {item_a} at ${format_money(price_a)} each and {count_b} {item_b} at "
            f"${format_money(price_b)} each. How many dollars does {name} spend in total?"
        ),
        answer=cost_a + cost_b,
        steps=[
            f"The {item_a} cost {count_a} × {format_money(price_a)} = {format_money(cost_a)}",
            f"The {item_b} cost {count_b} × {format_money(price_b)} = {format_money(cost_b)}",
            f"Together: {format_money(cost_a)} + {format_money(cost_b)} = {format_money(cost_a + cost_b)}",
        ],
        variables={"count_a": count_a, "price_a": format_money(price_a), "count_b": count_b,
                   "price_b": format_money(price_b)},
    )


def sharing_equal(rng: random.Random, difficulty: int) -> WordProblem:
    name = rng.choice(vocab.NAMES)
    things = rng.choice(vocab.SHARE_OBJECTS)
    people = rng.randint(2, 5 if difficulty == 1 else 12)
    each = rng.randint(2, 10 if difficulty == 1 else 40)
    total = people * each
    return WordProblem(
        template="sharing_equal",
        prompt=(
            f"{name} has {total} {things} and shares them equally among {people} friends. "
            f"How many {things} does each friend get?"
        ),
        answer=Fraction(each),
        steps=[f"Each friend gets {total} ÷ {people} = {each} {things}, because {people} × {each} = {total}"],
        variables={"total": total, "people": people},
    )


def sharing_fraction(rng: random.Random, difficulty: int) -> WordProblem:
    plural, singular = rng.choice(vocab.DIVISIBLE_OBJECTS)
    people = rng.randint(3, 12)
    # Fewer things than people: each share is a proper fraction, which is what the question asks for.
    amount = rng.randint(1, people - 1)
    share = Fraction(amount, people)
    amount_text = f"{amount} {singular if amount == 1 else plural}"
    return WordProblem(
        template="sharing_fraction",
        prompt=(
            f"{people} friends share {amount_text} equally. "
            f"What fraction of a {singular} does each friend get?"
        ),
        answer=share,
        steps=[f"Each friend gets {amount} ÷ {people} = {format_number(share)} of a {singular}"],
        variables={"amount": amount, "people": people},
        prefer_decimal=False,
    )


def travel_distance(rng: random.Random, difficulty: int) -> WordProblem:
    who, low, high = rng.choice(vocab.TRAVELLERS)
    speed = rng.randint(low, high)
    hours = rng.randint(2, 4 if difficulty == 1 else 9)
    return WordProblem(
        template="travel_distance",
        prompt=(
            f"{who.capitalize()} travels at a steady {speed} km per hour for {hours} hours. "
            f"How many kilometres does the trip cover?"
        ),
        answer=Fraction(speed * hours),
        steps=[f"Distance is speed times time: {speed} × {hours} = {speed * hours}"],
        variables={"speed": speed, "hours": hours},
    )


def travel_time(rng: random.Random, difficulty: int) -> WordProblem:
    who, low, high = rng.choice(vocab.TRAVELLERS)
    # Whole hours below level 3; halves and quarters of an hour at level 3 (a decimal answer).
    if difficulty < 3:
        hours = Fraction(rng.randint(2, 8))
    else:
        hours = Fraction(rng.choice([q for q in range(5, 33) if q % 4]), 4)
    # A speed that is a multiple of the hours' denominator keeps the stated distance a whole number of km.
    step = hours.denominator
    speed = step * rng.randint(-(-low // step), high // step)
    distance = int(speed * hours)
    return WordProblem(
        template="travel_time",
        prompt=(
            f"{who.capitalize()} covers {distance} km at a steady {speed} km per hour. "
            f"How many hours does the trip take?"
        ),
        answer=hours,
        steps=[f"Time is distance divided by speed: {distance} ÷ {speed} = {_decimal(hours)}"],
        variables={"distance": distance, "speed": speed},
    )


def travel_speed(rng: random.Random, difficulty: int) -> WordProblem:
    who, low, high = rng.choice(vocab.TRAVELLERS)
    speed = rng.randint(low, high)
    hours = rng.randint(2, 6)
    distance = speed * hours
    return WordProblem(
        template="travel_speed",
        prompt=(
            f"{who.capitalize()} covers {distance} km in {hours} hours at a steady speed. "
            f"What is the speed in km per hour?"
        ),
        answer=Fraction(speed),
        steps=[f"Speed is distance divided by time: {distance} ÷ {hours} = {speed}"],
        variables={"distance": distance, "hours": hours},
    )


def ages(rng: random.Random, difficulty: int) -> WordProblem:
    older, younger = rng.sample(vocab.NAMES, 2)
    young_age = rng.randint(2, 15)
    times = rng.randint(2, 5)
    years = rng.randint(1, 10)
    later_sum = times * young_age + young_age + 2 * years
    return WordProblem(
        template="ages",
        prompt=(
            f"{older} is {times} times as old as {younger}. In {years} years the sum of their ages will be "
            f"{later_sum}. How old is {younger} now?"
        ),
        answer=Fraction(young_age),
        steps=[
            f"In {years} years each of them is {years} years older, "
            f"so together they gain {years} + {years} = {2 * years} years.",
            f"So their ages now add up to {later_sum} - {2 * years} = {later_sum - 2 * years}.",
            f"{older}'s age is {times} times {younger}'s, "
            f"so together they make {times} + 1 = {times + 1} times {younger}'s age.",
            f"{younger} is {later_sum - 2 * years} ÷ {times + 1} = {young_age} years old.",
        ],
        variables={"times": times, "years": years, "later_sum": later_sum},
    )


def discount(rng: random.Random, difficulty: int) -> WordProblem:
    item = rng.choice(vocab.SALE_ITEMS)
    if difficulty < 3:
        percent = rng.choice([10, 20, 25, 50])
        price = Fraction(rng.randint(2, 30) * 20)  # a multiple of 20 keeps every one of these percents whole
    else:
        percent = rng.choice([5, 15, 30, 35, 40, 45, 60])
        price = Fraction(rng.randint(10, 400))
    off = price * percent / 100
    return WordProblem(
        template="discount",
        prompt=(
            f"A {item} costs ${format_money(price)}. It is on sale for {percent} percent off. "
            f"What is the sale price in dollars?"
        ),
        answer=price - off,
        steps=[
            f"The discount is {format_money(price)} × {percent} ÷ 100 = {format_money(off)}",
            f"Sale price: {format_money(price)} - {format_money(off)} = {format_money(price - off)}",
        ],
        variables={"price": format_money(price), "percent": percent},
    )


def recipe_scaling(rng: random.Random, difficulty: int) -> WordProblem:
    ingredient, product = rng.choice(vocab.RECIPES)
    amount = rng.randint(1, 6)
    makes = rng.choice([4, 6, 8, 10, 12, 16, 20, 24])
    wanted = rng.choice([n for n in range(2, 61) if n != makes])
    per_item = Fraction(amount, makes)
    needed = per_item * wanted
    return WordProblem(
        template="recipe_scaling",
        prompt=(
            f"A recipe uses {amount} {ingredient} to make {makes} {product}. "
            f"How many {ingredient} are needed to make {wanted} {product}?"
        ),
        answer=needed,
        steps=[
            f"For one of the {product}: {amount} ÷ {makes} = {format_number(per_item)}",
            f"For {wanted} {product}: {wanted} × {format_number(per_item)} = {_decimal(needed)}",
        ],
        variables={"amount": amount, "makes": makes, "wanted": wanted},
    )


def rectangle(rng: random.Random, difficulty: int) -> WordProblem:
    place = rng.choice(vocab.RECTANGLES)
    top = 9 if difficulty == 1 else 60
    length, width = sorted(rng.sample(range(2, top + 1), 2), reverse=True)
    stem = f"A rectangular {place} is {length} metres long and {width} metres wide."
    if rng.random() < 0.5:
        return WordProblem(
            template="rectangle_area",
            prompt=f"{stem} What is its area in square metres?",
            answer=Fraction(length * width),
            steps=[f"Area is length times width: {length} × {width} = {length * width}"],
            variables={"length": length, "width": width},
        )
    return WordProblem(
        template="rectangle_perimeter",
        prompt=f"{stem} How many metres of fence are needed to go all the way around it?",
        answer=Fraction(2 * (length + width)),
        steps=[
            "The fence covers two lengths and two widths.",
            f"Perimeter: 2 × ({length} + {width}) = 2 × {length + width} = {2 * (length + width)}",
        ],
        variables={"length": length, "width": width},
    )


# (template, lowest difficulty that uses it)
TEMPLATES: tuple[tuple[Callable[[random.Random, int], WordProblem], int], ...] = (
    (shopping_change, 1),
    (shopping_total, 1),
    (sharing_equal, 1),
    (travel_distance, 1),
    (rectangle, 1),
    (sharing_fraction, 2),
    (travel_time, 2),
    (travel_speed, 2),
    (ages, 2),
    (discount, 2),
    (recipe_scaling, 3),
)
