"""Meet new (and old) upstream releases before our users do.

The README's two commands and `.ci/run` install from `constraints.txt`, the exact versions
the suite last passed with. `pyproject.toml` keeps ranges for people who install the
package into their own environment; their upper bounds are the versions in the lock (no
higher than a test run has seen), their lower bounds the oldest versions tested.

This script installs the project into a fresh virtual environment with an empty pip
cache, resolved one of three ways, prints every version that differs from the lock, and
runs the test suite (or the tests named after `--`) there:

    python3 scripts/check_versions.py --newest        # caps lifted: the newest releases pip finds
    python3 scripts/check_versions.py --oldest        # direct dependencies at their lower bounds
    python3 scripts/check_versions.py --lock          # exactly the lock (what CI does)
    python3 scripts/check_versions.py --newest -- tests/test_render.py -k video

Refreshing the lock after a new release (see the README, "Upgrading dependencies"):

    python3 scripts/check_versions.py --newest --write-lock   # writes constraints.txt and the
                                                              # pyproject caps when the suite passes

Exit code: pytest's (0 when the suite passed).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "constraints.txt"
PYPROJECT = REPO / "pyproject.toml"
LOCK_HEADER = """\
# The exact versions the test suite passed with: the README's commands and .ci/run install
# with `pip install -c constraints.txt`. Refresh with `python3 scripts/check_versions.py
# --newest --write-lock` (it rewrites this file and the upper bounds in pyproject.toml
# only when the suite passes on the new versions).
"""
_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*(.*?)\s*$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(extras: tuple[str, ...] = ("test",)) -> list[tuple[str, str]]:
    """(name, specifier) of the project's runtime and `extras` dependencies."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project.get("optional-dependencies", {}).get(extra, [])
    out = []
    for req in reqs:
        name, _, spec = _REQ.match(req).groups()
        out.append((name, spec))
    return out


def lower_bound(spec: str) -> str | None:
    for part in spec.split(","):
        part = part.strip()
        if part.startswith(">=") or part.startswith("=="):
            return part[2:].strip()
    return None


def read_lock(path: Path = LOCK) -> dict[str, str]:
    pins = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if "==" in line:
                name, version = line.split("==", 1)
                pins[canonical(name)] = version.strip()
    return pins


def fresh_venv(root: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True)
    return root / "venv" / "bin" / "python"


def pip(python: Path, *args: str) -> None:
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-cache-dir", *args], check=True, cwd=REPO)


def install(python: Path, mode: str, work: Path) -> None:
    if mode == "lock":
        pip(python, "-c", str(LOCK), "-e", ".[test]")
        return
    reqs = requirements()
    if mode == "newest":          # every cap lifted: what a fresh resolve finds today
        lines = [name for name, _ in reqs]
    else:                         # oldest: each direct dependency at its lower bound
        lines = [f"{name}=={lower_bound(spec)}" if lower_bound(spec) else name for name, spec in reqs]
    (work / "requirements.txt").write_text("\n".join(lines) + "\n")
    pip(python, "-r", str(work / "requirements.txt"))
    pip(python, "--no-deps", "-e", ".")


def installed_versions(python: Path) -> dict[str, str]:
    out = subprocess.run([str(python), "-m", "pip", "list", "--format", "json", "--exclude-editable"],
                         capture_output=True, text=True, check=True).stdout
    return {canonical(p["name"]): p["version"] for p in json.loads(out)}


def changes(found: dict[str, str], locked: dict[str, str]) -> list[str]:
    rows = []
    for name in sorted(set(found) | set(locked)):
        a, b = locked.get(name), found.get(name)
        if a != b:
            rows.append(f"  {name}: {a or '-'} -> {b or '-'}")
    return rows


def write_lock(found: dict[str, str]) -> None:
    """constraints.txt from the environment the suite passed in, and pyproject's caps from it."""
    from_env = {k: v for k, v in found.items() if k not in ("pip", "setuptools", "qvq-tune")}
    LOCK.write_text(LOCK_HEADER + "".join(f"{k}=={v}\n" for k, v in sorted(from_env.items())))
    text = PYPROJECT.read_text()
    for name, spec in requirements():
        version = from_env.get(canonical(name))
        if version is None or spec.startswith("=="):
            continue
        bound = lower_bound(spec)
        new = (f">={bound}," if bound else "") + f"<={version}"
        text = re.sub(rf'"{re.escape(name)}(\[[^\]]*\])?[^"]*"', lambda m: f'"{name}{m.group(1) or ""}{new}"',
                      text, count=1)
    PYPROJECT.write_text(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--newest", action="store_const", const="newest", dest="mode")
    mode.add_argument("--oldest", action="store_const", const="oldest", dest="mode")
    mode.add_argument("--lock", action="store_const", const="lock", dest="mode")
    ap.add_argument("--write-lock", action="store_true", help="with --newest: refresh the lock when the suite passes")
    ap.add_argument("--work-dir", help="keep the environment here (default: a temporary folder)")
    ap.add_argument("pytest_args", nargs="*", help="after --: what pytest runs (default: the whole suite, -q)")
    args = ap.parse_args()
    if args.write_lock and (args.mode != "newest" or args.pytest_args):
        ap.error("--write-lock goes with --newest and the whole suite (no tests named)")

    work = Path(args.work_dir or tempfile.mkdtemp(prefix=f"qvq-tune-{args.mode}-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    python = fresh_venv(work)
    install(python, args.mode, work)
    found, locked = installed_versions(python), read_lock()
    diff = changes(found, locked)
    print(f"installed ({args.mode}) in {time.time() - started:.0f} s; versions that differ from constraints.txt:")
    print("\n".join(diff) if diff else "  none")
    test = subprocess.run([str(python), "-m", "pytest", *(args.pytest_args or ["-q"])], cwd=REPO)
    print(f"pytest exit code {test.returncode} ({args.mode}, {time.time() - started:.0f} s in all)")
    if test.returncode == 0 and args.write_lock:
        write_lock(found)
        print("constraints.txt and the pyproject.toml caps now follow these versions")
    return test.returncode


if __name__ == "__main__":
    raise SystemExit(main())
