"""Thin dispatcher: `python -m explorer <command> [args]`.

Each command lives in ``explorer/commands/<command>.py`` as ``main(argv) -> int`` and only turns
arguments or a Hydra config into calls of the public library functions.
"""
from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, str] = {
    "encoders": "list the vision encoders with parameters, channels and token counts",
    "bench": "measure this machine: GEMM roof, FastViTHD throughput, timer repeatability, prefill methods",
    "sweep": "measure a search space (Hydra app: sweep +space=NAME [overrides])",
    "search": "optuna multi-objective search over a space (search +space=NAME search.trials=N)",
    "plot": "write the interactive HTML report for a results database",
    "export": "write a results database as CSV or Parquet",
    "worker": "claim and measure a shared sweep's jobs with leases (worker store=URL [+space=NAME])",
    "train": "train chosen design points on the text-rich proxy task and store their accuracy",
    "predict": "predicted TTFT of a space on a device profile, no measuring (predict +space=NAME device=PROFILE)",
    "calibrate": "fit a device profile to the measurements in a results database (calibrate store=DIR)",
    "accuracy": "the accuracy model: accuracy fit|validate|show (published results -> predictions with intervals)",
    "validate": "compare factorised TTFT with the assembled VLM's end-to-end generate (validate resolutions=[256,512])",
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: explorer <command> [key=value ...]   (or python -m explorer ...)", "",
             "every command takes key=value options and --help (Hydra); commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}: one of {', '.join(COMMANDS)} (explorer --help lists them)",
              file=sys.stderr)
        return 2
    module = importlib.import_module(f"explorer.commands.{command}")
    return int(module.main(rest) or 0)


def console() -> None:
    """The ``explorer`` console script."""
    sys.exit(main())
