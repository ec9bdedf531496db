"""Identify a local checkpoint folder: which family, which known checkpoint, which licence.

Only files in the folder are read (`config.json`, and when present `qvq_tune.json` written
by the tiny zoo, the LICENSE text, the model card's front matter and the chat template);
nothing is loaded. The licence is `license.classify`'s verdict (text first, card second),
else the licence of the known checkpoint the folder is.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import UserError
from .license import classify, front_matter
from .registry import CHECKPOINTS, QVQ_SYSTEM_PROMPT, ModelFamily, family_for_model_type, supported_names

IDENTITY_FILE = "qvq_tune.json"


@dataclass(frozen=True)
class Detected:
    path: str
    family: str
    model_type: str
    architectures: list[str]
    model_class: str
    checkpoint: str | None        # a known repo id, or a zoo name, or None
    license: str                  # apache-2.0 | qwen | qwen-research | tongyi-qianwen | unknown
    reasoning_style: str
    system_prompt: str | None
    is_tiny: bool
    tools: str = ""               # how the family renders tool calls (`ModelFamily.tool_format`)

    def to_dict(self) -> dict:
        return asdict(self)


def read_config(model_dir: str | Path) -> dict:
    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise UserError("model folder does not exist", path=str(model_dir))
    if not model_dir.is_dir():
        raise UserError("expected a model folder, found a file", path=str(model_dir))
    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        raise UserError("no config.json in this folder; is it a Hugging Face checkpoint?",
                        path=str(model_dir))
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        line = getattr(exc, "lineno", None)
        raise UserError(f"config.json is not valid JSON ({exc.__class__.__name__}: "
                        f"{getattr(exc, 'msg', exc)})", path=str(cfg_path), line=line) from None
    if not isinstance(cfg, dict):
        raise UserError("config.json must hold a JSON object", path=str(cfg_path))
    return cfg


def family_of_config(cfg: dict, where: str) -> ModelFamily:
    model_type = cfg.get("model_type")
    if not isinstance(model_type, str):
        raise UserError("config.json has no 'model_type'", path=where, key="model_type")
    fam = family_for_model_type(model_type)
    if fam is None:
        raise UserError(f"unsupported architecture {model_type!r} "
                        f"(architectures: {cfg.get('architectures')}); supported model types: "
                        f"{', '.join(supported_names())}", path=where, key="model_type")
    return fam


def _template_text(model_dir: Path) -> str:
    for name in ("chat_template.jinja", "chat_template.json", "tokenizer_config.json"):
        p = model_dir / name
        if p.is_file():
            return p.read_text(encoding="utf-8", errors="replace")
    return ""


def detect(model_dir: str | Path) -> Detected:
    model_dir = Path(model_dir)
    cfg = read_config(model_dir)
    fam = family_of_config(cfg, str(model_dir / "config.json"))
    identity = {}
    if (model_dir / IDENTITY_FILE).is_file():
        try:
            identity = json.loads((model_dir / IDENTITY_FILE).read_text())
        except json.JSONDecodeError:
            raise UserError("not valid JSON", path=str(model_dir / IDENTITY_FILE)) from None
    meta = front_matter(model_dir)
    base_model = meta.get("base_model")
    if isinstance(base_model, list):
        base_model = base_model[0] if base_model else None
    name = identity.get("checkpoint") or base_model or cfg.get("_name_or_path") or None
    known = CHECKPOINTS.get(name) if name else None
    if known is None and name:  # a local path like /models/QVQ-72B-Preview
        tail = Path(str(name)).name.lower()
        known = next((c for c in CHECKPOINTS.values() if c.repo_id.split("/")[1].lower() == tail), None)
    if known is None:
        tail = model_dir.resolve().name.lower()
        known = next((c for c in CHECKPOINTS.values() if c.repo_id.split("/")[1].lower() == tail), None)
    verdict = classify(model_dir)     # the LICENSE text, then the card; else what is known of the checkpoint
    license_id = verdict.license if verdict.source != "none" else (
        identity.get("license") or (known.license if known else "unknown"))
    if identity.get("reasoning_style"):
        style = identity["reasoning_style"]
    elif known:
        style = known.reasoning_style
    elif QVQ_SYSTEM_PROMPT in _template_text(model_dir):
        style = "qvq"
    else:
        style = fam.reasoning_style
    system = identity.get("system_prompt", known.system_prompt if known else fam.default_system_prompt)
    if style == "qvq" and system is None:
        system = QVQ_SYSTEM_PROMPT
    return Detected(
        path=str(model_dir), family=fam.name, model_type=cfg["model_type"],
        architectures=list(cfg.get("architectures") or []), model_class=fam.model_class,
        checkpoint=identity.get("checkpoint") or (known.repo_id if known else None),
        license=license_id, reasoning_style=style, system_prompt=system,
        is_tiny=bool(identity.get("tiny", False)), tools=fam.tool_format,
    )
