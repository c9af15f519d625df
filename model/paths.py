"""Where the bundled assets (vocabulary, weights, model card) live."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BUNDLED_CHECKPOINT = "hmer_small.pt"


def assets_dir() -> Path:
    # A source checkout or an editable install keeps assets/ beside the packages;
    # a wheel installs the same folder as the (namespace) package `hmer_assets`.
    here = Path(__file__).resolve().parent.parent / "assets"
    if here.is_dir():
        return here
    spec = importlib.util.find_spec("hmer_assets")
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / "vocab.txt").is_file():
            return Path(location)
    raise FileNotFoundError("the hmer assets folder (vocab.txt, weights) is missing from this installation")


def asset_path(name: str) -> Path:
    return assets_dir() / name
