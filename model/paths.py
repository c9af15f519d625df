"""Where the bundled assets (vocabulary, weights, model card) live."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

BUNDLED_CHECKPOINT = "hmer_small.pt"


def assets_dir() -> Path:
    # A source checkout or an editable install keeps assets/ beside the packages;
    # a wheel installs the same folder as the package `hmer_assets`.
    here = Path(__file__).resolve().parent.parent / "assets"
    if here.is_dir():
        return here
    return Path(str(resources.files("hmer_assets")))


def asset_path(name: str) -> Path:
    return assets_dir() / name
