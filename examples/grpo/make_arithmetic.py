"""Write the GRPO demo data: one-step arithmetic word problems with numeric answers.

Project-made (no outside data): ``arithmetic_train.jsonl`` (400 rows) and
``arithmetic_validation.jsonl`` (64 rows) next to this script, rows ``{"prompt", "answer"}``.
Each prompt asks for the result on a last line ``Answer: <number>``, which the ``format``
reward checks and the ``numeric_match`` reward reads (examples/grpo/arithmetic.yaml).

    python examples/grpo/make_arithmetic.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

NAMES = ["Tom", "Anna", "Ben", "Lucy", "Sam", "Mia", "Leo", "Emma", "Max", "Zoe", "Nick", "Ella"]
THINGS = ["apples", "pencils", "stickers", "marbles", "books", "cookies", "coins", "cards", "shells", "stamps"]
INSTRUCTION = "End your reply with a last line 'Answer: <number>'."


def problem(rng: random.Random) -> dict:
    """One word problem: addition, subtraction or multiplication of small numbers."""
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    kind = rng.choice(["add", "sub", "mul"])
    if kind == "add":
        a, b = rng.randint(2, 30), rng.randint(2, 30)
        text, answer = f"{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have now?", a + b
    elif kind == "sub":
        a = rng.randint(10, 40)
        b = rng.randint(1, a - 1)
        text, answer = f"{name} has {a} {thing} and gives away {b}. How many {thing} does {name} have left?", a - b
    else:
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        text, answer = f"{name} has {a} boxes with {b} {thing} in each box. How many {thing} does {name} have?", a * b
    return {"prompt": f"{text} {INSTRUCTION}", "answer": str(answer)}


def write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def main() -> None:
    rng = random.Random(16)
    seen: set[str] = set()
    rows: list[dict] = []
    while len(rows) < 464:
        row = problem(rng)
        if row["prompt"] not in seen:
            seen.add(row["prompt"])
            rows.append(row)
    here = Path(__file__).parent
    write(here / "arithmetic_train.jsonl", rows[:400])
    write(here / "arithmetic_validation.jsonl", rows[400:])


if __name__ == "__main__":
    main()
