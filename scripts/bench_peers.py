"""Peers for `scripts/bench.py --peer NAME`: another toolkit trained on the same records, side by
side with qvq-tune. Now: ms-swift (pinned in `peers/ms_swift_pins.txt`), installed by this script
into its own virtual environment under the qvq-tune cache (`peers/ms-swift-VERSION`); torch,
torchvision, DeepSpeed and bitsandbytes are qvq-tune's own (a `.pth` line after the peer's
packages), so both sides run the same kernels. Its SFT runs through `peers/ms_swift_sft.py` with
the plugin `peers/ms_swift_plugin.py` (a template whose image-token id comes from the tokenizer,
and a gloo process group for ZeRO-3 on CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"
PINS = PEERS / "ms_swift_pins.txt"


class PeerUnavailable(RuntimeError):
    """The peer cannot be installed or started here; the benchmark skips it and says why."""


def pinned_version() -> str:
    line = next(x for x in PINS.read_text().splitlines() if x.startswith("ms-swift=="))
    return line.split("==", 1)[1].strip()


def ms_swift_python(cache: Path, say) -> Path:
    """The peer environment's interpreter, installing it on first use (a few minutes: it downloads)."""
    venv = cache / "peers" / f"ms-swift-{pinned_version()}"
    python = venv / "bin" / "python"
    ready = venv / ".installed"
    if ready.is_file() and python.is_file():
        return python
    say(f"installing ms-swift {pinned_version()} into {venv} (once; it downloads)")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, text=True)
        site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              check=True, capture_output=True, text=True).stdout.strip()
        # qvq-tune's packages (torch, deepspeed, bitsandbytes, ...) after the peer's own
        (Path(site) / "zz_qvq_tune_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        out = subprocess.run([str(python), "-m", "pip", "install", "-q", "-c", str(PINS),
                              f"ms-swift=={pinned_version()}", "transformers", "peft", "trl", "datasets"],
                             capture_output=True, text=True, timeout=1800)
        if out.returncode:
            raise PeerUnavailable(f"pip could not install ms-swift: {out.stderr.strip()[-1500:]}")
        check = subprocess.run([str(python), "-c", "import swift, deepspeed, torch; print(swift.__version__)"],
                               capture_output=True, text=True, timeout=600)
        if check.returncode:
            raise PeerUnavailable(f"ms-swift installed but does not import: {check.stderr.strip()[-1500:]}")
    except (OSError, subprocess.SubprocessError) as exc:
        raise PeerUnavailable(f"could not create the ms-swift environment at {venv}: {exc}") from exc
    ready.write_text(pinned_version() + "\n")
    return python


def reply(rec: dict) -> str:
    """The assistant reply qvq-tune's `reasoning: qvq` builds (and `trl_baseline.py` writes)."""
    if not rec.get("reasoning"):
        return rec["answer"]
    return f"{rec['reasoning']}\n\n**Final Answer**\n\n\\[ \\boxed{{{rec['answer']}}} \\]"


def write_records(task: Path, built: Path, out_dir: Path) -> tuple[Path, Path]:
    """ms-swift's rows (`messages` with `<image>` tags + `images`) for the task's records, and
    qvq-tune's built token ids for the same records in the same order."""
    from qvq_tune.data.dataset import load_samples
    rows = [json.loads(line) for line in (task / "train.jsonl").read_text().splitlines()]
    ds = load_samples(built)
    by_line = {line: ids for line, ids in zip(ds["line"], ds["input_ids"])}
    out_dir.mkdir(parents=True, exist_ok=True)
    data, expected = out_dir / "ms_swift.jsonl", out_dir / "ms_swift_expected_ids.jsonl"
    kept = [(i, r) for i, r in enumerate(rows, start=1) if i in by_line]
    data.write_text("".join(json.dumps({
        "messages": [{"role": "user", "content": "<image>" * len(r.get("images", [])) + r["question"]},
                     {"role": "assistant", "content": reply(r)}],
        "images": [str((task / p).resolve()) for p in r.get("images", [])]}) + "\n" for _, r in kept))
    expected.write_text("".join(json.dumps(by_line[i]) + "\n" for i, _ in kept))
    return data, expected


def ms_swift(python: Path, work: Path, name: str, model: Path, data: Path, expected: Path | None, *, steps: int,
             batch: int, processes: int, deepspeed: Path | None = None, qlora: bool = False,
             padding_free: bool = False) -> dict:
    """ms-swift's SFT (its own processes); returns its result with `tokens_per_s_measured`."""
    out_json = work / f"{name}.json"
    script = [str(PEERS / "ms_swift_sft.py"), "--data", str(data), "--model", str(model), "--out", str(out_json),
              "--steps", str(steps), "--batch", str(batch)] + (["--qlora"] if qlora else []) \
        + (["--deepspeed", str(deepspeed)] if deepspeed else []) + (["--padding-free"] if padding_free else []) \
        + (["--expected-ids", str(expected)] if expected else [])
    if processes == 1:
        cmd = [str(python), *script]
    else:
        cmd = [str(python), "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--master_port", str(_free_port()), *script]
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // processes)), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", MODELSCOPE_OFFLINE="1", USE_HF="1",
               PYTHONWARNINGS="ignore")
    env.pop("PYTHONPATH", None)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    (work / f"{name}.log").write_text(out.stdout + out.stderr)
    if out.returncode:
        raise RuntimeError(f"ms-swift run {name} failed (log: {work / f'{name}.log'}):\n{out.stderr[-3000:]}")
    result = json.loads(out_json.read_text())
    result["tokens_per_s_measured"] = round(result["num_tokens"] / result["train_runtime_s"], 1)
    return result


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
