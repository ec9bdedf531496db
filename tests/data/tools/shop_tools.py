"""Tools for the tool-loop tests: one per name; imported helpers are not tools."""
import time
from math import sqrt  # noqa: F401  (imported: not a tool)

PRICES = {"R1": 0.1, "C2": 0.25}


def price(part: str) -> float:
    """Unit price of a part."""
    return PRICES[part]


def slow(seconds: float = 5.0) -> str:
    time.sleep(seconds)
    return "done"


def broken() -> str:
    raise RuntimeError("the shop is closed")


def _helper():
    return "private"
