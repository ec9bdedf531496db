"""What a user may name as a model, turned into a local checkpoint folder.

- `tiny`: the embedded pre-trained tiny base (`tiny/pretrain.py`, built once, cached, with
  its pre-training data recorded, `tiny/base_record.py`);
- a family name (`qwen2_vl`, `qwen3_vl`, ...): a tiny random checkpoint of that family
  from the zoo, cached under a hash of the code and vocabulary it is built from;
- anything else: a folder, returned as given (`detect` reports a missing or unsupported
  one); a bare name that is none of these is an error listing what is accepted.

The CLI and the demo resolve names here once; the library stages below (build, train,
eval, export) take checkpoint folders.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..errors import UserError
from ..models.registry import FAMILIES, supported_names
from ..paths import cache_dir

TINY = "tiny"


def zoo_fingerprint(family: str) -> str:
    """Hash of what a tiny zoo checkpoint depends on: the zoo, tokenizer and registry code,
    the tokenizer corpus and the family's chat template."""
    from ..models import registry, tiny_shapes
    from ..synth.vocabulary import tokenizer_corpus
    from . import tokenizer, zoo
    h = hashlib.sha256(family.encode())
    for module in (zoo, tokenizer, registry, tiny_shapes):
        h.update(Path(module.__file__).read_bytes())
    h.update("\n".join(tokenizer_corpus()).encode())
    h.update(FAMILIES[family].chat_template_text().encode())
    return h.hexdigest()[:12]


def needs_building(model: str) -> bool:
    """Whether `resolve_model_dir(model)` may build a model (the tiny base, a zoo checkpoint)
    rather than return a folder: callers check what they can before that."""
    return model == TINY or (model in FAMILIES and not Path(model).expanduser().exists())


def resolve_model_dir(model: str) -> Path:
    if model == TINY:
        from .base_record import record_pretraining
        from .pretrain import ensure_tiny_base
        base = ensure_tiny_base()
        record_pretraining(base)
        return base
    path = Path(model).expanduser()
    if model in FAMILIES and not path.exists():
        from .zoo import build_tiny
        folder = cache_dir() / "zoo" / f"tiny-{model}-{zoo_fingerprint(model)}"
        if not (folder / "config.json").is_file():
            build_tiny(model, folder)
        return folder
    if not path.exists() and "/" not in model:
        raise UserError(f"{model!r} is not a model folder, {TINY!r}, or a model family "
                        f"({', '.join(supported_names())})", key="model")
    return path
