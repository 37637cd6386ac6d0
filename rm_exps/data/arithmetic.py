"""Synthetic arithmetic word problems with gold answers: best-of-N exact-match accuracy offline.

Each problem is a one- or two-step story ("Mia has 7 pens. She buys 5 more. ...") whose prompt asks
for a final line "The answer is N.". As preference pairs, `chosen` is the worked solution and
`rejected` the same solution with one wrong number carried through to the answer, so a reward
model has to check the arithmetic, not the style. The `answer` column holds the gold integer (as
a string). Train and test prompts are disjoint; every draw comes from one torch.Generator.
"""

from __future__ import annotations

import re

import datasets
import torch

NAMES = [
    ("Mia", "She"),
    ("Leo", "He"),
    ("Ava", "She"),
    ("Sam", "He"),
    ("Zoe", "She"),
    ("Max", "He"),
    ("Ivy", "She"),
    ("Ben", "He"),
    ("Lea", "She"),
    ("Tom", "He"),
]
ITEMS = ["apples", "pens", "stickers", "marbles", "books", "cookies", "stamps", "shells", "cards", "coins"]
INSTRUCTION = " Finish with a line of the form 'The answer is N.'"
KINDS = ("add", "sub", "mul", "add_sub")


def _int(generator: torch.Generator, low: int, high: int) -> int:
    """Uniform integer in [low, high]."""
    return int(torch.randint(low, high + 1, (1,), generator=generator).item())


def make_problem(generator: torch.Generator, max_operand: int = 20) -> dict[str, str]:
    """One problem: prompt, the worked solution's steps as (text, value) and the answer."""
    kind = KINDS[_int(generator, 0, len(KINDS) - 1)]
    name, pronoun = NAMES[_int(generator, 0, len(NAMES) - 1)]
    item = ITEMS[_int(generator, 0, len(ITEMS) - 1)]
    a, b = _int(generator, 2, max_operand), _int(generator, 2, max_operand)
    if kind == "add":
        story = f"{name} has {a} {item}. {pronoun} gets {b} more. How many {item} does {name} have now?"
        steps = [(f"{a} + {b}", a + b)]
    elif kind == "sub":
        a, b = max(a, b) + 1, min(a, b)
        story = f"{name} has {a} {item} and gives {b} of them to a friend. How many {item} are left?"
        steps = [(f"{a} - {b}", a - b)]
    elif kind == "mul":
        a, b = 2 + a % 11, 2 + b % 11  # factors in 2..12
        story = f"{name} buys {a} boxes with {b} {item} in each box. How many {item} is that in total?"
        steps = [(f"{a} * {b}", a * b)]
    else:
        c = _int(generator, 1, a + b - 1)
        story = (
            f"{name} has {a} {item}, buys {b} more and then gives away {c}. "
            f"How many {item} does {name} have in the end?"
        )
        steps = [(f"{a} + {b}", a + b), (f"{a + b} - {c}", a + b - c)]
    return {"prompt": story + INSTRUCTION, "steps": steps}


def solution_text(steps: list[tuple[str, int]]) -> str:
    return " ".join(f"{expr} = {value}." for expr, value in steps) + f"\nThe answer is {steps[-1][1]}."


def corrupted_steps(steps: list[tuple[str, int]], generator: torch.Generator) -> list[tuple[str, int]]:
    """The same solution with the last step's result off by a nonzero amount (carried to the answer)."""
    delta = _int(generator, 1, 3) * (1 if _int(generator, 0, 1) else -1)
    expr, value = steps[-1]
    if value + delta < 0:
        delta = -delta
    return [*steps[:-1], (expr, value + delta)]


def build_arithmetic(
    num_train: int, num_test: int, max_operand: int, generator: torch.Generator
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """`num_train` + `num_test` pairs with distinct prompts (train drawn first)."""
    seen: set[str] = set()
    rows: list[dict[str, str]] = []
    attempts = 0
    while len(rows) < num_train + num_test:
        attempts += 1
        if attempts > 50 * (num_train + num_test):
            raise ValueError(f"could not draw {num_train + num_test} distinct problems with max_operand {max_operand}")
        problem = make_problem(generator, max_operand)
        if problem["prompt"] in seen:
            continue
        seen.add(problem["prompt"])
        steps = problem["steps"]
        rows.append(
            {
                "prompt": problem["prompt"],
                "chosen": solution_text(steps),
                "rejected": solution_text(corrupted_steps(steps, generator)),
                "answer": str(steps[-1][1]),
            }
        )
    return datasets.Dataset.from_list(rows[:num_train]), datasets.Dataset.from_list(rows[num_train:])


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def extract_answer(text: str) -> str | None:
    """The final answer of a response: the number after the last 'answer is', else the last number."""
    tail = text.lower().rsplit("answer is", 1)
    numbers = _NUMBER.findall(tail[1] if len(tail) == 2 and _NUMBER.search(tail[1]) else text)
    if not numbers:
        return None
    value = (numbers[0] if len(tail) == 2 and _NUMBER.search(tail[1]) else numbers[-1]).replace(",", "")
    return value[:-2] if value.endswith(".0") else value


def is_correct(response: str, answer: str) -> bool:
    """Exact match of the extracted final answer with the gold one (numerically, for numbers)."""
    found = extract_answer(response)
    if found is None:
        return False
    try:
        return float(found) == float(answer)
    except ValueError:
        return found.strip() == answer.strip()
