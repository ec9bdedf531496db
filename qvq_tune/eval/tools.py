"""Evaluation that runs the tools: `qvq-tune eval --tools my_tools.py`.

A tools file is plain Python: each public function it defines (not imported, not starting
with `_`) is a tool, called by its name with the call's JSON arguments as keyword
arguments. Its schema (for the diagnostics) comes from the signature: parameters without a
default are required, annotations `str` / `int` / `float` / `bool` / `list` / `dict` give
the JSON types.

The loop, per prompt: generate; parse each tool call in the reply (the family's markers);
run it in a forked process with a time limit; append the results as the template writes a
tool turn; generate again, up to `--max-tool-turns` replies. A call that does not parse,
names no tool, raises or times out becomes that call's result as an error text the model
reads next, as a real agent loop would show it; the evaluation itself never stops on one.
The last reply is scored as any other (`scoring.score_reply`); the row adds `transcript`
(each reply and the results it got) and `tools` (calls, parsed, known, valid, turns).

The prompt is the built sample up to the first reply after its last user turn (so the
model makes every call itself); the reference is the sample's final answer.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import multiprocessing
from dataclasses import dataclass
from pathlib import Path

from ..data.render import IGNORE_INDEX
from ..data.tool_calls import FoundCall, find_calls, tool_call_diagnostics
from ..errors import UserError
from ..models.registry import ModelFamily
from .prompts import Prompt, prompt_from_sample

JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}


@dataclass
class Toolbox:
    """The functions of a tools file, their schemas and the time limit per call."""
    path: str
    functions: dict
    timeout: float = 10.0

    @property
    def schemas(self) -> list[dict]:
        return [function_schema(name, fn) for name, fn in self.functions.items()]

    def run(self, call: FoundCall) -> str:
        """The call's result as text; an error text when it cannot run or fails."""
        if not call.parses:
            return f"error: the tool call is not valid ({call.error})"
        if call.name not in self.functions:
            return f"error: no tool named {call.name!r}; tools: {', '.join(sorted(self.functions))}"
        return run_with_timeout(self.functions[call.name], call.arguments, self.timeout, call.name)


def load_tools(path: str | Path, timeout: float = 10.0) -> Toolbox:
    path = Path(path)
    if not path.is_file():
        raise UserError("tools file does not exist", path=str(path))
    if timeout <= 0:
        raise UserError("--tool-timeout must be > 0 seconds", key="tool_timeout")
    spec = importlib.util.spec_from_file_location(f"qvq_tune_user_tools_{abs(hash(str(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:      # the user's file: say where it failed, do not crash
        raise UserError(f"cannot load the tools file ({type(exc).__name__}: {exc})", path=str(path)) from None
    functions = {name: fn for name, fn in vars(module).items()
                 if inspect.isfunction(fn) and fn.__module__ == module.__name__ and not name.startswith("_")}
    if not functions:
        raise UserError("the tools file defines no public function (one per tool name)", path=str(path))
    return Toolbox(str(path), functions, timeout)


def function_schema(name: str, fn) -> dict:
    """An OpenAI tool entry for a Python function, from its signature."""
    props, required = {}, []
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        props[p.name] = {"type": JSON_TYPES[p.annotation]} if p.annotation in JSON_TYPES else {}
        if p.default is p.empty:
            required.append(p.name)
    doc = inspect.getdoc(fn) or ""
    return {"type": "function", "function": {"name": name, "description": doc.split("\n")[0],
                                             "parameters": {"type": "object", "properties": props,
                                                            "required": required}}}


def _child(conn, fn, arguments):
    try:
        value = fn(**arguments)
        conn.send(("ok", value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)))
    except BaseException as exc:           # noqa: BLE001 - any failure is the call's result
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def run_with_timeout(fn, arguments: dict, timeout: float, name: str) -> str:
    """`fn(**arguments)` in a forked process, killed after `timeout` seconds."""
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, fn, arguments), daemon=True)
    proc.start()
    send.close()
    try:
        if not recv.poll(timeout):
            return f"error: {name} timed out after {timeout:g} s"
        status, value = recv.recv()
    except EOFError:
        return f"error: {name} ended without a result"
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join()
        recv.close()
    return value if status == "ok" else f"error: {value}"


def tool_prompt_from_sample(sample: dict, tokenizer, family: ModelFamily, prefix: str = "") -> Prompt:
    """The prompt up to the first reply after the sample's last user turn (not a tool
    result), plus the template's generation prefix; the reference is the final answer."""
    last = prompt_from_sample(sample, tokenizer, family, prefix)
    ids, labels = sample["input_ids"], sample["labels"]
    start_id = tokenizer.convert_tokens_to_ids(family.turn_start)
    starts = [i for i, t in enumerate(ids) if t == start_id] + [len(ids)]
    user_end = 0
    for a, b in zip(starts, starts[1:]):
        head = tokenizer.decode(ids[a + 1:b], skip_special_tokens=False)
        if head.startswith("user") and not head.removeprefix("user").lstrip().startswith(family.tool_response_tokens[0]):
            user_end = b
    reply = next(i for i in range(user_end, len(ids)) if labels[i] != IGNORE_INDEX)
    prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []
    batch = {**last.batch, "input_ids": list(ids[:reply]) + prefix_ids}
    return Prompt(last.id, batch, last.reference, last.reference_reply, prefix)


def tool_turn_text(processor, family: ModelFamily, results: list[str]) -> str:
    """What the chat template writes for tool results after an assistant turn, through the
    next assistant header (and its generation prefix)."""
    user = {"role": "user", "content": [{"type": "text", "text": "?"}]}
    kw = {"chat_template": family.tool_template_text()} if family.tool_chat_template else {}
    base = processor.apply_chat_template([user], tokenize=False, **kw)
    full = processor.apply_chat_template([user] + [{"role": "tool", "content": r} for r in results],
                                         tokenize=False, add_generation_prompt=True, **kw)
    if not full.startswith(base):
        raise UserError("the chat template does not write tool results after the turns before them")
    return base[len(base.rstrip()):] + full[len(base):]       # the line break after the last turn, then the results


def agent_rows(em, prompts: list[Prompt], batches: list[dict], toolbox: Toolbox, *, max_turns: int,
               max_new_tokens: int, batch_size: int, desc: str = "eval") -> list[dict]:
    """Run the tool loop for every prompt; one row per prompt (before scoring): its replies,
    the results each got, the tokens generated and whether the last reply hit the budget."""
    from .generate import generate_replies
    tok = em.processor.tokenizer
    markers = em.family.tool_call_tokens
    states = [{"batch": b, "replies": [], "results": [], "tokens": 0, "hit": False, "done": False}
              for b in batches]
    for turn in range(max_turns):
        active = [s for s in states if not s["done"]]
        if not active:
            break
        gens = generate_replies(em.model, em.processor, [s["batch"] for s in active], max_new_tokens=max_new_tokens,
                                batch_size=batch_size, desc=f"{desc}, turn {turn + 1}")
        for s, g in zip(active, gens):
            s["replies"].append(g.text)
            s["tokens"] += g.num_tokens
            s["hit"] = g.hit_budget
            calls = find_calls(g.text, markers)
            if not calls or g.hit_budget or turn == max_turns - 1:
                s["done"] = True
                continue
            results = [toolbox.run(c) for c in calls]
            s["results"].append(results)
            more = tok(tool_turn_text(em.processor, em.family, results), add_special_tokens=False)["input_ids"]
            s["batch"] = {**s["batch"], "input_ids": list(s["batch"]["input_ids"]) + list(g.ids) + more}
    return states


def transcript_row(prompt: Prompt, state: dict, schemas: list[dict], markers: tuple[str, str]) -> dict:
    """The transcript and tool diagnostics of one prompt's loop."""
    replies = [prompt.prefix + r for r in state["replies"]]
    return {"transcript": [{"reply": r, "results": state["results"][i] if i < len(state["results"]) else []}
                           for i, r in enumerate(replies)],
            "tools": tool_call_diagnostics(state["replies"], schemas, markers)}

