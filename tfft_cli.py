"""The `tfft` command's entry point: a quiet TensorFlow start-up, then `tfft.cli.main`.

It lives outside the `tfft` package on purpose: importing anything inside
`tfft` imports TensorFlow (`tfft/__init__.py`), and TensorFlow's C++ start-up
log (oneDNN, CUDA stubs, `cuInit` on a machine without a GPU) is written
while it loads. The library never touches the logging environment; only this
command does, so `tfft` prints tfft's own lines and Keras progress bars.

Set `TF_CPP_MIN_LOG_LEVEL=0` to see TensorFlow's whole start-up log again.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

# TensorFlow's C++ log lines (absl format: severity, date, time, thread, file:line]) and
# absl's note that it is not initialised yet.
_CPP_LOG_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ [\w./-]+:\d+\] ")
# Python's own output, never taken for the continuation of a C++ log message.
_PYTHON_LINE = re.compile(r"^Traceback |\b\w*(Warning|Error)\b")
_ABSL_NOTE = "WARNING: All log messages before absl::InitializeLog() is called"
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}


def _min_level() -> int:
    """The TF_CPP_MIN_LOG_LEVEL in force: the user's, else 3 (start-up errors too)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        return int(os.environ["TF_CPP_MIN_LOG_LEVEL"])
    except ValueError:
        return 0


def _filter(lines: list[str], level: int) -> list[str]:
    """The lines to write back: C++ log messages below `level` go, with their continuation lines."""
    kept, dropping = [], False
    for line in lines:
        match = _CPP_LOG_LINE.match(line)
        if line.startswith(_ABSL_NOTE):
            dropping = level > 0
        elif match is not None:
            dropping = _SEVERITY[match.group(1)] < level and match.group(1) != "F"
        elif dropping and _PYTHON_LINE.search(line) is None:
            continue  # a multi-line C++ message, e.g. cpu_feature_guard's instruction list
        else:
            dropping = False
        if not dropping:
            kept.append(line)
    return kept


def _quiet_import(level: int) -> None:
    """Imports tfft (and TensorFlow) with file descriptor 2 captured, then replays it filtered.

    TensorFlow 2.21 writes its start-up lines through absl before absl's
    logging is set up, which ignores TF_CPP_MIN_LOG_LEVEL; so the lines are
    caught at the file descriptor and those below `level` are dropped.
    Everything else (Python warnings, tracebacks) is written back.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            # Later lines (device discovery's cuInit error on a machine without a GPU)
            # go through absl once it is set up, which honours TF_CPP_MIN_LOG_LEVEL.
            import tfft  # noqa: F401  imports TensorFlow, selecting its Keras backend
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", errors="replace")
            kept = _filter(text.splitlines(), level)
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")
                sys.stderr.flush()


def main(argv=None) -> int:
    level = _min_level()
    if level > 0:
        _quiet_import(level)
    from tfft.cli.main import main as tfft_main

    return tfft_main(argv)


if __name__ == "__main__":
    sys.exit(main())
