"""User settings, kept as JSON in the platform's config folder (platformdirs). Qt-free."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from platformdirs import user_config_dir, user_data_dir

from model.atomic import atomic_write

APP = "hmer"


def config_dir() -> Path:
    return Path(os.environ.get("HMER_CONFIG_DIR") or user_config_dir(APP))


def data_dir() -> Path:
    return Path(os.environ.get("HMER_DATA_DIR") or user_data_dir(APP))


@dataclass
class Settings:
    beam_size: int = 10
    exact_search: bool = False  # keep every beam, as the reference does (slower); default: prune hopeless ones
    live: bool = True  # recognize after each stroke
    debounce_ms: int = 150  # the pen up this long before the beam search (measured: benchmarks/live_drawing.py)
    preview: bool = True  # show a greedy reading right after each stroke, then the beam's
    device: str = "auto"  # auto, cpu, cuda
    checkpoint: str = ""  # empty = the bundled model
    crohme_dir: str = ""  # CROHME-layout folder for fine-tuning replay (optional)

    def validated(self) -> "Settings":
        return Settings(
            beam_size=min(max(int(self.beam_size), 1), 32),
            exact_search=bool(self.exact_search),
            live=bool(self.live),
            debounce_ms=min(max(int(self.debounce_ms), 0), 5000),
            preview=bool(self.preview),
            device=self.device if self.device in ("auto", "cpu", "cuda") else "auto",
            checkpoint=str(self.checkpoint or ""),
            crohme_dir=str(self.crohme_dir or ""),
        )


class SettingsStore:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or config_dir() / "settings.json"
        self.problem: str | None = None  # why the file could not be used, shown to the user

    def load(self) -> Settings:
        if not self.path.exists():
            return Settings()
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            known = {f.name for f in fields(Settings)}
            return Settings(**{k: v for k, v in raw.items() if k in known}).validated()
        except (OSError, ValueError, TypeError) as e:
            self.problem = f"settings file {self.path} could not be read ({e}); defaults are in use"
            return Settings()

    def save(self, settings: Settings) -> None:
        """Atomic: a crash leaves the previous file."""
        text = json.dumps(asdict(settings.validated()), indent=2).encode("utf-8")
        atomic_write(self.path, lambda f: f.write(text))

    def reset(self) -> Settings:
        self.save(Settings())
        self.problem = None
        return Settings()
