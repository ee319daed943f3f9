"""Run wagate's benchmarks: `python -m bench [--only NAME] [--quick]`.

Each benchmark is a module of this package with `run(args) -> dict` (the raw numbers) and
`report(result) -> str` (a Markdown summary). The runner prints the summary and writes the raw
numbers, with the machine and the command, to `bench/results/NAME.json` (`NAME.quick.json` for a
`--quick` run, so a quick check never overwrites the numbers RESULTS.md quotes).

To add a benchmark: write `bench/NAME.py` with those two functions and list it in BENCHMARKS.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import machine

BENCHMARKS = (
    "session_memory",
    "history_import",
    "live_ingest",
    "api_read",
    "realtime_fanout",
    "cloud_webhook",
    "webhooks_fanout",
    "ai_kb",
    "jira_bridge",
)
REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        action="append",
        choices=BENCHMARKS,
        metavar="NAME",
        help=f"run only this benchmark (repeatable; one of: {', '.join(BENCHMARKS)})",
    )
    parser.add_argument("--quick", action="store_true", help="a reduced matrix, for a smoke run")
    parser.add_argument(
        "--results-dir", type=Path, default=RESULTS_DIR, help="where the raw JSON goes"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show wagate's own logs")
    return parser.parse_args(argv)


def _shown(path: str) -> str:
    """The interpreter as the user typed it: relative to the current directory when inside it."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def _git() -> dict[str, object]:
    """The commit the numbers belong to, and whether the work tree differed from it."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"commit": commit, "dirty": bool(status.strip())}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    command = shlex.join([_shown(sys.executable), "-m", "bench", *sys.argv[1:]])
    args.results_dir.mkdir(parents=True, exist_ok=True)
    failed = []
    for name in args.only or BENCHMARKS:
        module = importlib.import_module(f"bench.{name}")
        print(f"== {name}", flush=True)
        started = time.monotonic()
        started_at = datetime.now(UTC)
        try:
            result = module.run(args)
        except Exception:
            logging.getLogger("bench").exception("benchmark %s failed", name)
            failed.append(name)
            continue
        document = {
            "benchmark": name,
            "date": started_at.isoformat(timespec="seconds"),
            "seconds": round(time.monotonic() - started, 1),
            "command": command,
            "quick": args.quick,
            "machine": machine.describe(),
            "git": _git(),
            "result": result,
        }
        suffix = ".quick.json" if args.quick else ".json"
        path = args.results_dir / f"{name}{suffix}"
        path.write_text(json.dumps(document, indent=2) + "\n")
        print(module.report(result))
        print(f"\n{name}: {document['seconds']} s, raw numbers in {path}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
