"""The process `accelerate launch` starts once per rank: read the run folder, run the objective."""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import nullcontext


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="qvq-tune training worker (started by `qvq-tune train`)")
    parser.add_argument("--run", required=True, help="run folder written by train.run.train")
    parser.add_argument("--resume-from", help="a complete checkpoint of this run to continue from")
    args = parser.parse_args(argv)
    from ..logs import quiet_third_party
    from ..run_folder import RECIPE, RunFolder
    from ..recipe import load_recipe
    from .objectives import run_objective

    quiet_third_party()
    run = RunFolder(args.run)
    recipe = load_recipe(run.file(RECIPE))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != recipe.launch.num_processes:
        # e.g. one node of a multi-node job started alone, or by a launcher that fell back to
        # this machine's own ranks: it must not finish the run by itself.
        print(f"qvq-tune: error: this job has {world} rank(s) but the run needs launch.num_processes = "
              f"{recipe.launch.num_processes}; start every node with the command `qvq-tune train --prepare` "
              f"printed ({run.path})", file=sys.stderr, flush=True)
        return 2
    with run.lock() if os.environ.get("RANK", "0") == "0" else nullcontext():
        report = run_objective(recipe, run, args.resume_from)
    if report:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
