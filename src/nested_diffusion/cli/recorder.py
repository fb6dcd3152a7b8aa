"""Collects anytime updates and writes the run's files (PNG, grid, GIF, JSON), each atomically."""
from __future__ import annotations

import json
from pathlib import Path

from ..imaging import progression_grid, row, save_gif, save_png
from ..io import atomic_write_bytes
from ..core.events import AnytimeUpdate


class AnytimeRecorder:
    def __init__(self, out: Path, settings: dict, scale: int = 4):
        self.out, self.settings, self.scale = Path(out), settings, scale
        self.snapshots, self.records = [], []

    def add(self, u: AnytimeUpdate) -> None:
        self.snapshots.append(u.x0.detach().cpu())
        record = u.info()
        record["elapsed_s"] = round(record.pop("elapsed"), 4)
        self.records.append(record)

    def write(self, interrupted: bool = False) -> list[Path]:
        if not self.snapshots:
            return []
        self.out.mkdir(parents=True, exist_ok=True)
        paths = [save_png(row(self.snapshots[-1], self.scale), self.out / "final.png"),
                 save_png(progression_grid(self.snapshots, self.scale), self.out / "progression.png"),
                 save_gif([row(s, self.scale) for s in self.snapshots], self.out / "progression.gif")]
        doc = {"settings": self.settings, "interrupted": interrupted, "updates": self.records}
        atomic_write_bytes(self.out / "updates.json", (json.dumps(doc, indent=1) + "\n").encode())
        paths.append(self.out / "updates.json")
        return paths
