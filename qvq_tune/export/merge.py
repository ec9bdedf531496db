"""The streamed merge: fold a LoRA adapter into the base's safetensors shards one at a time.

Each base shard is opened memory-mapped; every tensor is read, an adapted weight gets
`scale * B @ A` added in fp32, the result is cast to the export dtype, and the shard is
written under the base's own file and tensor names before the next one is opened. The
whole model is never held: peak memory follows the largest shard
(`scripts/bench_merge.py` measures it). The base's layout is kept as it is on disk;
adapter keys are matched to it through `names.NameIndex` whichever layout they follow,
and a key that matches no base weight is refused before anything is written.
"""

from __future__ import annotations

import ctypes
import gc
import json
import math
import struct
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import UserError
from ..models.loading import DTYPES
from .adapter import Adapter, LoraPair
from .names import NameIndex
from .nf4 import Rounding

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


@dataclass
class Shard:
    file: str
    names: list[str]


@dataclass
class MergePlan:
    """Which base weight each adapter tensor lands on (base names, as on disk)."""
    lora: dict[str, list[LoraPair]] = field(default_factory=lambda: defaultdict(list))
    whole: dict[str, torch.Tensor] = field(default_factory=dict)
    fan_in_fan_out: bool = False
    rounding: Rounding | None = None      # merge into the 4-bit rounding a QLoRA adapter trained on

    @property
    def adapted(self) -> int:
        return sum(len(v) for v in self.lora.values())


def base_shards(base_dir: str | Path) -> list[Shard]:
    """The base's safetensors files and the tensor names in each (from the index when sharded)."""
    from safetensors import safe_open

    base_dir = Path(base_dir)
    index = base_dir / INDEX
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map") or {}
        by_file = defaultdict(list)
        for name, file in weight_map.items():
            by_file[file].append(name)
        for file in by_file:
            if not (base_dir / file).is_file():
                raise UserError(f"{INDEX} lists {file}, which is missing", path=str(base_dir))
        return [Shard(f, sorted(n)) for f, n in sorted(by_file.items())]
    if (base_dir / SINGLE).is_file():
        with safe_open(base_dir / SINGLE, framework="pt") as f:
            return [Shard(SINGLE, sorted(f.keys()))]
    other = sorted(p.name for p in base_dir.glob("*.bin"))
    raise UserError("no safetensors weights (model.safetensors or model.safetensors.index.json)"
                    + (f"; found {', '.join(other)}: convert them to safetensors first" if other else ""),
                    path=str(base_dir))


def plan_merge(adapter: Adapter, shards: list[Shard], aliases: tuple[tuple[str, str], ...]) -> MergePlan:
    """Match every adapter tensor to one base weight; refuse what a plain LoRA merge cannot do."""
    where = str(adapter.weights_file)
    if adapter.use_dora:
        raise UserError("a DoRA adapter (use_dora / lora_magnitude_vector) cannot be merged by the streamed "
                        "merge; merge it with PEFT's merge_and_unload", path=where, key="use_dora")
    if adapter.unsupported:
        raise UserError(f"{adapter.unsupported[0]}: embedding LoRA / trainable tokens are not merged",
                        path=where, key=adapter.unsupported[0])
    index = NameIndex((n for s in shards for n in s.names), aliases)
    plan = MergePlan(fan_in_fan_out=bool(adapter.config.get("fan_in_fan_out")))
    for module, pair in adapter.pairs.items():
        target = _resolve(index, f"{module}.weight", where)
        plan.lora[target].append(pair)
        if pair.b_bias is not None:
            raise UserError(f"{module}.lora_B.bias: LoRA biases (lora_bias=True) are not merged", path=where,
                            key=module)
    for name, tensor in adapter.whole.items():
        plan.whole[_resolve(index, name, where)] = tensor
    return plan


def _resolve(index: NameIndex, name: str, where: str) -> str:
    try:
        target = index.resolve(name)
    except ValueError as exc:
        raise UserError(str(exc), path=where, key=name) from None
    if target is None:
        raise UserError(f"adapter tensor {name!r} matches no weight of the base model (under any weight-name "
                        "layout); was it trained on another base?", path=where, key=name)
    return target


def merged_tensor(name: str, tensor: torch.Tensor, plan: MergePlan, dtype: torch.dtype, *,
                  owned: bool = False) -> torch.Tensor:
    """The merged value of one base tensor, cast to `dtype` (non-float tensors are kept).
    `owned`: the caller hands `tensor` over (a fresh read), so an fp32 one is updated in place."""
    if plan.rounding is not None and name in plan.rounding.names:
        tensor, owned = plan.rounding.apply(tensor), True
    if name in plan.whole:
        tensor = plan.whole[name]
    elif name in plan.lora:
        weight = tensor.to(torch.float32, copy=not owned)
        for pair in plan.lora[name]:
            a, b = pair.a.float(), pair.b.float()
            if plan.fan_in_fan_out:
                a, b = b.T, a.T
            if (b.shape[0], a.shape[1]) != tuple(weight.shape):
                raise UserError(f"{pair.module}: LoRA product {(b.shape[0], a.shape[1])} does not fit the base "
                                f"weight {name} {tuple(weight.shape)}", key=pair.module)
            weight.addmm_(b, a, alpha=pair.scale)     # weight += scale * B @ A, in fp32, without a temporary
        tensor = weight
    return tensor.to(dtype) if tensor.is_floating_point() else tensor


_ITEM_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
_FLOATING = ("F64", "F32", "F16", "BF16")


def output_bytes(base_dir: str | Path, shards: list[Shard], dtype: str) -> int:
    """Size of the merged weights in `dtype`, from the shard headers (no tensor is read)."""
    from safetensors import safe_open
    out_item = torch.empty((), dtype=DTYPES[dtype]).element_size()
    total = 0
    for shard in shards:
        with safe_open(Path(base_dir) / shard.file, framework="pt") as f:
            for name in shard.names:
                info = f.get_slice(name)
                code = info.get_dtype()
                total += math.prod(info.get_shape()) * (out_item if code in _FLOATING else _ITEM_BYTES.get(code, 8))
    return total


_CODES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
          torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
          torch.bool: "BOOL"}


def write_safetensors(path: Path, layout: list[tuple[str, str, list[int]]], tensor_for, metadata: dict) -> int:
    """Write a safetensors file one tensor at a time: `layout` is (name, dtype code, shape)
    in file order, `tensor_for(name)` makes each tensor when its turn comes. The header is
    known in advance, so no more than one tensor is in memory (safetensors' own
    `save_file` needs every tensor of the file, and a bytes copy of them, at once)."""
    header, offset = {"__metadata__": metadata}, 0
    for name, code, shape in layout:
        size = math.prod(shape) * _ITEM_BYTES[code]
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(blob)) + blob)
        for name, code, shape in layout:
            tensor = tensor_for(name).contiguous()
            if _CODES.get(tensor.dtype) != code or list(tensor.shape) != list(shape):
                raise RuntimeError(f"{name}: made {tensor.dtype} {tuple(tensor.shape)}, the header says {code} {shape}")
            fh.write(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
            del tensor
    return offset


def release_freed_memory() -> None:
    """Hand memory freed by the last shard back to the OS: glibc keeps freed blocks of
    the sizes it has seen (its mmap threshold grows with them), so without this the
    process would carry each shard's working memory into the next."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):     # not glibc: nothing to hand back
        pass


def stream_merge(base_dir: str | Path, shards: list[Shard], plan: MergePlan, out_dir: str | Path,
                 dtype: str = "bfloat16", progress=None) -> dict:
    """Write the merged shards (and the index when the base is sharded) into `out_dir`:
    each output shard has the base shard's file name and tensor names."""
    from safetensors import safe_open

    base_dir, out_dir = Path(base_dir), Path(out_dir)
    torch_dtype = DTYPES[dtype]
    out_code = _CODES[torch_dtype]
    weight_map, total, done = {}, 0, 0
    for shard in shards:
        with safe_open(base_dir / shard.file, framework="pt") as f:
            layout = []
            for name in shard.names:
                info = f.get_slice(name)
                code = info.get_dtype()
                layout.append((name, out_code if code in _FLOATING else code, info.get_shape()))
            total += write_safetensors(
                out_dir / shard.file, layout,
                lambda name: merged_tensor(name, f.get_tensor(name), plan, torch_dtype, owned=True), {"format": "pt"})
        weight_map.update({name: shard.file for name in shard.names})
        done += sum(1 for n in shard.names if n in plan.lora or n in plan.whole)
        release_freed_memory()
        if progress:
            progress(shard.file)
    if (base_dir / INDEX).is_file():
        (out_dir / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                indent=2) + "\n", encoding="utf-8")
    expected = len(plan.lora) + len(plan.whole)
    if done != expected:    # every planned weight was found in some shard
        raise RuntimeError(f"merged {done} of {expected} planned weights")
    return {"shards": len(shards), "tensors": len(weight_map), "adapted_weights": len(plan.lora),
            "lora_pairs": plan.adapted, "replaced_weights": len(plan.whole), "bytes": total, "dtype": dtype,
            "base_weights": "as-trained" if plan.rounding is not None else "original",
            "rounded_weights": len(plan.rounding.names) if plan.rounding is not None else 0}
