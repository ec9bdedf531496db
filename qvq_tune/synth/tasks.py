"""Synthetic "proprietary diagram" tasks built from primitives the tiny base can read.

Each task stands in for a company's own diagrams: a schematic whose symbols are parts,
a question only the company's domain knowledge answers (what a part costs, what it
draws), a step-by-step trace that refers to what is in the image, and a checkable
final answer. The base model was pre-trained only to name colours, shapes and counts,
so it does poorly until tuned. Each task also writes DPO rejections: a plausible wrong
trace, a looping trace and a language-mixed trace.

A tool task (`parts_lookup`) keeps part of the knowledge out of the image and the prompt:
the trace reads the parts, calls a tool (`price(part)`), and computes with its result. The
generator writes the tool as a Python file beside the data (`tools.py`) for `qvq-tune eval
--tools`; tool tasks have no DPO pairs and stay out of the tiny tokenizer's corpus (their
tool words are spelt byte by byte, as a user's new words are).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from .scenes import Scene
from .vocabulary import COLOURS, SHAPES, plural

PART_OF_SHAPE = {"circle": "valve", "square": "pump", "triangle": "sensor"}
PRICE_OF_SHAPE = {"circle": 2, "square": 3, "triangle": 5}
AMPS_OF_COLOUR = {"red": 1, "green": 2, "blue": 3, "yellow": 4, "purple": 5, "orange": 6}
SPEC_MIN_COUNT = 3


@dataclass(frozen=True)
class ToolStep:
    """A turn that calls tools: its reasoning, its calls (name, arguments) and their results."""
    reasoning: str
    calls: tuple[tuple[str, dict], ...]
    results: tuple[str, ...]


@dataclass(frozen=True)
class Worked:
    """One worked example: the question, the reasoning steps and the final answer (after
    the tool steps, when the task has a tool)."""
    question: str
    steps: tuple[str, ...]
    answer: str
    tool_steps: tuple[ToolStep, ...] = ()

    @property
    def reasoning(self) -> str:
        return " ".join(self.steps)


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    solve: Callable[[Scene], Worked]
    wrong_value: Callable[[Scene, random.Random], Scene]   # a near-miss reading of the image
    tools: tuple[dict, ...] = ()                           # the tool list the prompt offers
    tools_file: Callable[[], str] | None = None            # the Python source of those tools


def _seen(scene: Scene) -> str:
    return f"The schematic shows {scene.count} {scene.colour} {plural(scene.shape, scene.count)}."


def _parts_cost(scene: Scene) -> Worked:
    part, price = PART_OF_SHAPE[scene.shape], PRICE_OF_SHAPE[scene.shape]
    total = scene.count * price
    return Worked(
        question="What do the parts in this schematic cost in total?",
        steps=(_seen(scene), f"Each {scene.shape} is a {part}.", f"A {part} costs {price}.",
               f"{scene.count} x {price} = {total}."),
        answer=str(total))


def _rated_load(scene: Scene) -> Worked:
    amps = AMPS_OF_COLOUR[scene.colour]
    total = scene.count * amps
    return Worked(
        question="What current do the parts in this schematic draw in total?",
        steps=(_seen(scene), f"Each {scene.colour} part draws {amps} A.", f"{scene.count} x {amps} = {total}."),
        answer=f"{total} A")


def _spec_check(scene: Scene) -> Worked:
    part = PART_OF_SHAPE[scene.shape]
    n_sensors = scene.count if scene.shape == "triangle" else 0
    ok = n_sensors >= SPEC_MIN_COUNT
    return Worked(
        question=f"The spec needs at least {SPEC_MIN_COUNT} sensors. Does this schematic meet the spec?",
        steps=(_seen(scene), f"Each {scene.shape} is a {part}.",
               f"So there {'is' if n_sensors == 1 else 'are'} {n_sensors} {plural('sensor', n_sensors)}.",
               f"{n_sensors} is {'at least' if ok else 'less than'} {SPEC_MIN_COUNT}."),
        answer="yes" if ok else "no")


# parts_lookup: a part is its colour and kind ("red valve"); its price is known only to the
# `price` tool (shape's price + colour's rating: 3..11), neither drawn nor asked about.
PART_PRICES = {f"{colour} {PART_OF_SHAPE[shape]}": PRICE_OF_SHAPE[shape] + AMPS_OF_COLOUR[colour]
               for shape in SHAPES for colour in sorted(COLOURS)}
PRICE_TOOL = {"type": "function", "function": {
    "name": "price", "description": "Unit price of a part, e.g. red valve",
    "parameters": {"type": "object", "properties": {"part": {"type": "string"}}, "required": ["part"]}}}


def _parts_lookup(scene: Scene) -> Worked:
    part = f"{scene.colour} {PART_OF_SHAPE[scene.shape]}"
    price = PART_PRICES[part]
    total = scene.count * price
    look = ToolStep(f"{_seen(scene)} Each {scene.shape} is a {PART_OF_SHAPE[scene.shape]}.",
                    (("price", {"part": part}),), (str(price),))
    return Worked(question="What do the parts in this schematic cost in total?",
                  steps=(f"A {part} costs {price}.", f"{scene.count} x {price} = {total}."),
                  answer=str(total), tool_steps=(look,))


def price_tools_file() -> str:
    """The `price` tool as a tools file for `qvq-tune eval --tools`."""
    table = ",\n".join(f"    {k!r}: {v}" for k, v in PART_PRICES.items())
    return (f'"""The parts_lookup task\'s tool: unit prices, known only to this lookup."""\n\n'
            f"PRICES = {{\n{table},\n}}\n\n\n"
            "def price(part: str) -> int:\n"
            '    """Unit price of a part, e.g. red valve."""\n'
            "    return PRICES[part]\n")


def _miscount(scene: Scene, rng: random.Random) -> Scene:
    n = scene.count + rng.choice([-1, 1]) if 1 < scene.count < 4 else (2 if scene.count == 1 else 3)
    cells = tuple(range(n))
    return Scene(scene.shape, scene.colour, cells, tuple((0, 0, 0) for _ in cells))


def _recolour(scene: Scene, rng: random.Random) -> Scene:
    colour = rng.choice([c for c in sorted(COLOURS) if c != scene.colour])
    return Scene(scene.shape, colour, scene.cells, scene.jitter)


def _reshape(scene: Scene, rng: random.Random) -> Scene:
    shape = rng.choice([s for s in SHAPES if s != scene.shape])
    return Scene(shape, scene.colour, scene.cells, scene.jitter)


TASKS: dict[str, Task] = {t.name: t for t in (
    Task("parts_cost", "bill of materials: count the parts, price them, add up", _parts_cost,
         lambda s, rng: (_miscount if rng.random() < 0.5 else _reshape)(s, rng)),
    Task("rated_load", "electrical load: each part's colour sets its current rating", _rated_load,
         lambda s, rng: (_miscount if rng.random() < 0.5 else _recolour)(s, rng)),
    Task("spec_check", "compliance check: does the schematic have enough sensors?", _spec_check,
         lambda s, rng: (_miscount if rng.random() < 0.5 else _reshape)(s, rng)),
    Task("parts_lookup", "agent: read the parts, look their price up with the price(part) tool, add up",
         _parts_lookup, lambda s, rng: (_miscount if rng.random() < 0.5 else _recolour)(s, rng),
         tools=(PRICE_TOOL,), tools_file=price_tools_file),
)}

# Words a Chinese-mixing trace swaps in (QVQ's known language-mixing failure).
_ZH = {"The schematic shows": "示意图显示", "Each": "每个", "costs": "价格是", "So there": "所以有",
       "draws": "消耗", "is a": "是一个"}


DEFECTS = ("looping", "language_mixed")
LOOP_PHRASES = ("Wait, let me look again.", "Let me check once more.")


def looping(worked: Worked, rng: random.Random) -> str:
    """A trace that circles back over its first observation before it answers."""
    first = worked.steps[0]
    loop = [first, LOOP_PHRASES[0], first, LOOP_PHRASES[1], first]
    return " ".join(loop + list(worked.steps[1:rng.randint(1, len(worked.steps))]))


def language_mixed(worked: Worked) -> str:
    text = worked.reasoning
    for en, zh in _ZH.items():
        text = text.replace(en, zh)
    return text


def taught_defects(reply: str) -> set[str]:
    """Which of the defects these tasks teach a reply shows: a loop phrase, or any of the
    Chinese phrases the language-mixed traces swap in (not the random characters a tiny
    model may emit when sampled)."""
    found = set()
    if any(p in reply for p in LOOP_PHRASES):
        found.add("looping")
    if any(zh in reply for zh in _ZH.values()):
        found.add("language_mixed")
    return found


def all_task_phrasebooks() -> list[str]:
    """Every sentence template of every task, for the tokenizer corpus."""
    from .scenes import Scene as S
    lines = []
    for task in (t for t in TASKS.values() if not t.tools):
        for shape in SHAPES:
            for colour in sorted(COLOURS):
                for n in range(0, 5):
                    w = task.solve(S(shape, colour, tuple(range(n)), ((0, 0, 0),) * n))
                    lines += [w.question, w.reasoning, w.answer]
    return lines
