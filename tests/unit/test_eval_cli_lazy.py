"""`batcher eval` is registered lazily: `batcher --help` lists it without importing the package."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
from click.testing import CliRunner
from batcher.cli import main

top = CliRunner().invoke(main, ["--help"])
assert top.exit_code == 0 and "eval" in top.output, top.output
print("loaded-after-help", any(m.startswith("batcher.evals") for m in sys.modules))
sub = CliRunner().invoke(main, ["eval", "--help"])
assert sub.exit_code == 0, sub.output
print("commands", " ".join(line.split()[0] for line in sub.output.split("Commands:")[1].splitlines() if line.strip()))
"""


def test_eval_group_is_listed_without_importing_it() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True).stdout
    assert "loaded-after-help False" in out
    assert "commands compare report run runs schedule tick validate" in out
