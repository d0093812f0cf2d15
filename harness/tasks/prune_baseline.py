"""Alias of ``compress.py`` kept for its older command line.

    python harness/tasks/prune_baseline.py CONFIG --model_path P --budget B --method frequency|first|NAME
        --work_dir DIR [--calib_cfg FILE] [--calib_num N] [...every compress.py option]

``--method first`` is ``keep_first``; ``--calib_num N`` is ``--calib_samples N``. Everything else is
compress.py's (see ``harness/tasks/compress.py``).
"""
from __future__ import annotations

import sys

from harness.tasks import compress

ALIASES = {"first": "keep_first"}  # the names this task's command line had before the registry
OPTIONS = {"--calib_num": "--calib_samples"}


def translate(argv: list[str]) -> list[str]:
    """The compress.py arguments of an old prune_baseline.py command line."""
    out = []
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if name in OPTIONS:
            arg = OPTIONS[name] + eq + value
        elif i > 0 and argv[i - 1] == "--method" and arg in ALIASES:
            arg = ALIASES[arg]
        elif name == "--method" and eq and value in ALIASES:
            arg = f"--method={ALIASES[value]}"
        out.append(arg)
    return out


def main(argv=None) -> int:
    return compress.main(translate(list(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    raise SystemExit(main())
