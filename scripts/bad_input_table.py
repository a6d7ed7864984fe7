"""Print README.md's bad-input table: every case of ``tests/test_bad_inputs.py`` run on its own fake
data under a temp folder, with the first line of the message it gets.

    python scripts/bad_input_table.py            # the Markdown table, to paste between the
                                                 # <!-- bad-input-table --> markers of README.md

Temp folders show as ``<tmp>``, the repository as ``<repo>``. A case whose input is accepted, or that
stops with a raw traceback (a known defect, ``xfail`` in the test), says so in italics.
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

HEADER = "| method | bad input | first line of the message |\n|---|---|---|\n"


def _cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|")


def markdown(cells: Mapping[str, str]) -> str:
    """The table of every case, from ``cells`` (case id -> its cell, see ``tests.test_bad_inputs.table_cell``)."""
    from tests.test_bad_inputs import CASES

    rows = [f"| {case.method} | {_cell(case.what)} | {_cell(cells[case.id])} |" for case in CASES]
    return HEADER + "\n".join(rows) + "\n"


def collect() -> dict[str, str]:
    """Run every case in a fresh temp folder; case id -> its table cell."""
    from tests.test_bad_inputs import CASES, run_case, table_cell

    messages: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="litseg-bad-input-") as top:
        for i, case in enumerate(CASES):
            tmp = Path(top) / f"case{i}"
            tmp.mkdir()
            messages[case.id] = table_cell(run_case(case, tmp), tmp)
    return messages


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")
    warnings.simplefilter("ignore")
    sys.stdout.write(markdown(collect()))


if __name__ == "__main__":
    main()
