"""Where the pack's model files live: the `planx` models folder, the embedded tiny model, and codebooks by hash.

Layout of `models/planx/` (registered through `folder_paths`, extra_model_paths.yaml may add more):
- a bundle folder per model, as `python -m planx_core.assemble` writes it: `planner/`,
  `ta_tok.safetensors`, `text_encoder/`, `vae.safetensors`, `dit.safetensors`, `branch.safetensors`,
  `bundle.json`. Load Planner lists folders with `planner/` and `ta_tok.safetensors`; the tiny
  model loader lists folders with `bundle.json`;
- loose `*.safetensors` files (semantic branches, TA-Tok) anywhere below it.
The embedded tiny model (planx_core/embedded) is always the first choice. Nothing is downloaded.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import folder_paths
import torch

from planx_core.bundle import EMBEDDED, load_bundle
from planx_core.plan import Plan, PlanError
from planx_core.tokenizer_files import load_tatok

FOLDER = "planx"
EMBEDDED_CHOICE = "embedded: planx-tiny"
_EXTENSIONS = {".safetensors", ".json"}


def register_folder() -> None:
    """Register `models/planx` (keeping any directories extra_model_paths.yaml gave the key)."""
    default = os.path.join(folder_paths.models_dir, FOLDER)
    if FOLDER in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path(FOLDER, default, is_default=True)
    else:
        folder_paths.folder_names_and_paths[FOLDER] = ([default], set(_EXTENSIONS))


def planx_dirs() -> list[Path]:
    return [Path(p) for p in folder_paths.get_folder_paths(FOLDER) if os.path.isdir(p)]


def _bundle_folders(required: tuple[str, ...]) -> list[str]:
    names = []
    for root in planx_dirs():
        for sub in sorted(p for p in root.iterdir() if p.is_dir()):
            if all((sub / r).exists() for r in required):
                names.append(sub.name)
    return names


def planner_choices() -> list[str]:
    return [EMBEDDED_CHOICE] + _bundle_folders(("planner/config.json", "ta_tok.safetensors"))


def bundle_choices() -> list[str]:
    return [EMBEDDED_CHOICE] + _bundle_folders(("bundle.json",))


def branch_choices() -> list[str]:
    files = [f for f in folder_paths.get_filename_list(FOLDER) if f.endswith(".safetensors")]
    return [EMBEDDED_CHOICE] + sorted(files)


def folder_for(choice: str) -> Path:
    """The folder behind a planner / bundle choice; a clear error when it is gone."""
    if choice == EMBEDDED_CHOICE:
        return EMBEDDED
    for root in planx_dirs():
        if (root / choice).is_dir():
            return root / choice
    raise FileNotFoundError(f"model folder {choice!r} is not in models/{FOLDER} any more; pick another entry or "
                            f"put the folder back (searched: {', '.join(map(str, planx_dirs())) or 'no planx folder'})")


def branch_path(choice: str) -> Path:
    if choice == EMBEDDED_CHOICE:
        return EMBEDDED / "branch.safetensors"
    path = folder_paths.get_full_path(FOLDER, choice)
    if path is None:
        raise FileNotFoundError(f"semantic-branch file {choice!r} is not in models/{FOLDER}; pick another entry")
    return Path(path)


# ----------------------------------------------------------------------------- cached loads

_BUNDLES: OrderedDict[str, object] = OrderedDict()


def cached_bundle(choice: str):
    """A loaded planx_core bundle (the last two stay in memory: the graph's nodes share one)."""
    folder = folder_for(choice)
    key = f"{folder}:{os.path.getmtime(folder / 'bundle.json')}"
    if key not in _BUNDLES:
        _BUNDLES[key] = load_bundle(folder)
        while len(_BUNDLES) > 2:
            _BUNDLES.popitem(last=False)
    _BUNDLES.move_to_end(key)
    return _BUNDLES[key]


_CODEBOOKS: dict[str, tuple[float, str, torch.Tensor]] = {}


def _tatok_files() -> list[Path]:
    files = [EMBEDDED / "ta_tok.safetensors"]
    for root in planx_dirs():
        files += sorted(root.rglob("*ta_tok*.safetensors"))
    return files


def codebook_for(plan: Plan) -> torch.Tensor:
    """The codebook `[N, D]` the plan's tokens index, found by hash among the known TA-Tok files."""
    want = plan.codebook.digest
    for path in _tatok_files():
        stamp = path.stat().st_mtime
        cached = _CODEBOOKS.get(str(path))
        if cached is None or cached[0] != stamp:
            tatok = load_tatok(path)
            _CODEBOOKS[str(path)] = cached = (stamp, tatok.digest(), tatok.codebook().detach().cpu())
        if cached[1] == want or (not want and cached[2].shape[0] == plan.codebook.size):
            return cached[2]
    raise PlanError(f"no TA-Tok file matches the plan's codebook {plan.codebook.describe()}: the plan was made with "
                    f"another tokenizer. Put that tokenizer's ta_tok.safetensors in models/{FOLDER}, or re-plan "
                    f"with this model's planner")
