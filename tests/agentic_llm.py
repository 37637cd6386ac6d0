"""A deterministic stand-in for the reward agent's LLM roles, as a FakeOpenAIServer `respond` callable.

It reads the agent's prompts the way a model would (instruction, constraint, answers) and answers
by fixed rules, so tests exercise the real prompts, parsers, sandbox and HTTP path:
* router: A if the instruction states a form constraint (words, lowercase, end with), B if it asks a
  question of fact ("capital", "Who", "When");
* constraint analyzer: one Checker line per such constraint; gate: yes, except for "Tone" checkers;
* coder: a correct checker per constraint, except that the first lowercase checker has a bug
  (a NameError) that the repair prompt fixes;
* fact checker: a contradiction unless both answers name the same city; evidence "Paris is the
  capital of France."; scores 10 for an answer saying Paris, 2 otherwise;
* judge: reads the rendered verifier results and follows the reference's priority (factual accuracy,
  then constraints satisfied, then the reward model score; ties go to A); an answer containing
  "NO VERDICT" gets a reply without a tag, "TWO VERDICTS" one with both tags.
"""

from __future__ import annotations

import re

from fake_openai_server import message_text

CODE = {
    "NumberOfWordsChecker": (
        'import re\n\ndef check_following(response):\n    return len(re.findall(r"\\w+", response)) >= {n}\n'
    ),
    "EndChecker": "def check_following(response):\n    return response.rstrip().endswith({end!r})\n",
    "LowercaseChecker": "def check_following(response):\n    return response == response.lower()\n",
    "ToneChecker": "def check_following(response):\n    return True\n",
}
BUGGY_LOWERCASE = "def check_following(response):\n    return respons == response.lower()\n"
CITIES = ("Paris", "Lyon", "Marseille")


def _field(text: str, name: str) -> str:
    match = re.search(rf"{name}:\n(.*?)(?:\n\n[A-Z][a-z]+( [A-Z])?:\n|\Z)", text, flags=re.DOTALL)
    return match.group(1).strip() if match else ""


def constraints_of(instruction: str) -> list[str]:
    found = []
    if m := re.search(r"at least (\d+) words", instruction):
        found.append(f"NumberOfWordsChecker: at least {m.group(1)} words")
    if m := re.search(r"end with '([^']+)'", instruction):
        found.append(f"EndChecker: the response ends with '{m.group(1)}'")
    if "lowercase" in instruction:
        found.append("LowercaseChecker: all letters lowercase")
    if "friendly tone" in instruction:
        found.append("ToneChecker: friendly tone")
    return found


class AgentLLM:
    """respond(messages) for FakeOpenAIServer; `buggy_first` makes the first lowercase checker wrong."""

    def __init__(self, buggy_first: bool = True, code_override: str | None = None):
        self.buggy_first = buggy_first
        self.code_override = code_override  # every generated checker is this code (for sandbox tests)

    def __call__(self, messages: list[dict]) -> str:
        text = message_text(messages[-1])
        if text.startswith("You decide which checks"):
            instruction = _field(text, "Instruction")
            letters = (["A"] if constraints_of(instruction) else []) + (
                ["B"] if re.search(r"capital|Who |When ", instruction) else []
            )
            return "CHECKS: " + (", ".join(letters) or "none")
        if text.startswith("List the hard constraints"):
            return (
                "\n".join(f"{i}. {c}" for i, c in enumerate(constraints_of(_field(text, "Instruction")), 1)) or "NONE"
            )
        if text.startswith("Can the following constraint"):
            return "No." if "Tone" in text else "Yes"
        if text.startswith("Write a Python function"):
            constraint = text.rsplit("Constraint: ", 1)[1].strip()
            return f"```python\n{self._code(constraint)}```"
        if text.startswith("This checker for the constraint"):
            constraint = re.search(r'constraint "([^"]+)"', text).group(1)
            return self._code(constraint, repaired=True)
        if text.startswith("Two answers to the same question"):
            cities = [{c for c in CITIES if c in _field(text, name)} for name in ("Answer A", "Answer B")]
            return "[]" if cities[0] == cities[1] else f"['A says {' '.join(cities[0])}, B says {' '.join(cities[1])}']"
        if text.startswith("Two answers to the question below disagree"):
            return "['capital of France']"
        if text.startswith("Answer factually"):
            return "Paris is the capital of France."
        if text.startswith("Rate the factual accuracy"):
            a, b = (10 if "Paris" in _field(text, name) else 2 for name in ("Answer A", "Answer B"))
            return f"[[{a}]] <<{b}>> One of them names the wrong city."
        if text.startswith("You are judging which of two answers"):
            return judge_reply(text)
        raise AssertionError(f"unexpected prompt: {text[:80]!r}")

    def _code(self, constraint: str, repaired: bool = False) -> str:
        if self.code_override is not None:
            return self.code_override
        kind = constraint.split(":")[0].strip()
        if kind == "LowercaseChecker" and self.buggy_first and not repaired:
            return BUGGY_LOWERCASE
        if kind == "NumberOfWordsChecker":
            return CODE[kind].replace("{n}", re.search(r"\d+", constraint).group(0))
        if kind == "EndChecker":
            return CODE[kind].replace("{end!r}", repr(re.search(r"'([^']+)'", constraint).group(1)))
        return CODE[kind]


def _judge_key(block: str) -> tuple[float, float, float]:
    """(factual accuracy, constraints satisfied share, RM score) of one "Verifier results for X" block."""
    fact = re.search(r"factual accuracy: ([\d.]+)", block)
    met = re.search(r"constraints satisfied: (\d+) of (\d+)", block)
    rm = re.search(r"reward model score[^:]*: (-?[\d.]+)", block)
    return (
        float(fact.group(1)) if fact else -1.0,
        int(met.group(1)) / int(met.group(2)) if met else -1.0,
        float(rm.group(1)) if rm else -1e9,
    )


def judge_reply(text: str) -> str:
    answers = _field(text, "Answer A") + _field(text, "Answer B")
    if "NO VERDICT" in answers:
        return "Both answers have merits."
    if "TWO VERDICTS" in answers:
        return "[[A]] is tempting, but [[B]]"
    a, b = (_judge_key(text.split(f"Verifier results for {x}:\n", 1)[1].split("\n\n", 1)[0]) for x in "AB")
    return "[[A]]" if a >= b else "Answer B is better. [[B]]"
