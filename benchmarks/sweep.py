"""What the in-process sweeps of benchmarks/ share: one JSON record per sweep of every run it made, the commands
that made them and the machine, saved after every run (an interrupted sweep keeps what it finished) and read
again by the next call, which skips the runs it already holds."""

from __future__ import annotations

import json
from pathlib import Path

import host  # benchmarks/host.py (the script's folder is on sys.path)
from dfcil_core.atomic import write_text_atomically


class SweepRecord:
    def __init__(self, out: Path | None, command: str):
        self.out, self.command = out, command
        self.record = json.loads(out.read_text()) if out and out.exists() else {"commands": [], "runs": []}

    @property
    def runs(self) -> list[dict]:
        return self.record["runs"]

    def add(self, run: dict) -> None:
        print(json.dumps(run), flush=True)
        self.runs.append(run)
        if self.out:
            self.record["commands"] = sorted({*self.record["commands"], self.command})
            self.record.pop("torch", None)  # records before host.describe() kept the torch build apart
            self.record.update(machine=host.describe())
            write_text_atomically(self.out, json.dumps(self.record, indent=1))
