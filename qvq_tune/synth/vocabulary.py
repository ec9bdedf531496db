"""The words of our synthetic world, shared by the scenes, the tasks and the tiny tokenizer."""

from __future__ import annotations

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
    "yellow": (235, 200, 30), "purple": (150, 60, 190), "orange": (245, 130, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}


def plural(shape: str, n: int) -> str:
    return shape if n == 1 else shape + "s"


def tokenizer_corpus() -> list[str]:
    """Text the tiny tokenizer learns its merges from: task phrasing, chat-template
    scaffolding and the Qwen system prompts. Deterministic."""
    from ..models.registry import QVQ_SYSTEM_PROMPT, QWEN_SYSTEM_PROMPT, THINK_TOKENS
    from .tasks import all_task_phrasebooks

    think_open, think_close = THINK_TOKENS
    lines = [QVQ_SYSTEM_PROMPT, QWEN_SYSTEM_PROMPT, "Answer in the language of the question.", "system", "user", "assistant",
             "**Final Answer**\n\n\\[ \\boxed{15} \\]", f"{think_open}\nreasoning\n{think_close}\n\n",
             "Picture 1: Video 1: The answer is", "I see", "Each", "costs", "Final answer:"]
    for colour in COLOURS:
        for shape in SHAPES:
            for n in range(1, 5):
                lines.append(f"There are {n} {colour} {plural(shape, n)}.")
    lines += [f"{a} x {b} = {a * b}. {a} + {b} = {a + b}." for a in range(10) for b in range(10)]
    lines += all_task_phrasebooks()
    return lines
