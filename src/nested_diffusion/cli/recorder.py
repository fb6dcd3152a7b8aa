"""Collects anytime updates and writes the run's files (PNG, grid, GIF, JSON), each atomically. updates.json
records every update; the progression strip and GIF keep the frames ``core.events.in_strip`` keeps (every finished
inner run; previews at calls 1, 2, 4, 8, … of their run) and always the last update."""
from __future__ import annotations

import json
from pathlib import Path

from ..imaging import progression_grid, row, save_gif, save_png
from ..io import atomic_write_bytes
from ..core.events import AnytimeUpdate, in_strip


class AnytimeRecorder:
    def __init__(self, out: Path, settings: dict, scale: int = 4):
        self.out, self.settings, self.scale = Path(out), settings, scale
        self.snapshots, self.records, self.last = [], [], None

    def add(self, u: AnytimeUpdate) -> None:
        self.last = u.x0.detach().cpu()
        if in_strip(u.source, u.inner_step):
            self.snapshots.append(self.last)
        record = u.info()
        record["elapsed_s"] = round(record.pop("elapsed"), 4)
        self.records.append(record)

    def write(self, interrupted: bool = False) -> list[Path]:
        if self.last is None:
            return []
        self.out.mkdir(parents=True, exist_ok=True)
        frames = self.snapshots if self.snapshots and self.snapshots[-1] is self.last else self.snapshots + [self.last]
        paths = [save_png(row(self.last, self.scale), self.out / "final.png"),
                 save_png(progression_grid(frames, self.scale), self.out / "progression.png"),
                 save_gif([row(s, self.scale) for s in frames], self.out / "progression.gif")]
        doc = {"settings": self.settings, "interrupted": interrupted, "updates": self.records}
        atomic_write_bytes(self.out / "updates.json", (json.dumps(doc, indent=1) + "\n").encode())
        paths.append(self.out / "updates.json")
        return paths
