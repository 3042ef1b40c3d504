"""Where the pack's model files live: the `planx` models folder, the embedded tiny model, and codebooks by hash.

Layout of `models/planx/` (registered through `folder_paths`, extra_model_paths.yaml may add more):
- a bundle folder per model, as `python -m planx_core assemble` writes it: `planner/`,
  `ta_tok.safetensors`, `text_encoder/`, `vae.safetensors`, `dit.safetensors`, `branch.safetensors`,
  `bundle.json`. Load Planner lists folders with `planner/` and `ta_tok.safetensors`; the tiny
  model loader lists folders with `bundle.json`;
- loose `*.safetensors` files (semantic branches, TA-Tok) anywhere below it.
The embedded tiny model (planx_core/embedded) is always the first choice; the embedded SemanticGen
model (planx_core/embedded/semanticgen: stage-1 semantic generator, compressor, stage-2 DiT and its
in-context branch) is appended last to the planner, model and branch lists. Nothing is downloaded.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from pathlib import Path

import folder_paths
import torch

from planx_core import EMBEDDED
from planx_core.files import CheckpointError, plain_entry
from planx_core.pipelines import FILES, load_bundle
from planx_core.plan import Plan, PlanError
from planx_core.semanticgen import FILES as SEMANTICGEN_FILES
from planx_core.semanticgen import SemanticGen, load_compressor
from planx_core.tatok import load_tatok

FOLDER = "planx"
EMBEDDED_CHOICE = "embedded: planx-tiny"
SEMANTICGEN_CHOICE = "embedded: semanticgen-tiny"  # Load Plan-X Tiny Model and the branch list
SEMANTICGEN_PLANNER_CHOICE = "embedded: semanticgen-tiny (diffusion)"  # Load Planner
SEMANTICGEN_FOLDER = EMBEDDED / "semanticgen"
_EXTENSIONS = {".safetensors", ".json"}


def register_folder() -> None:
    """Register `models/planx` (keeping any directories extra_model_paths.yaml gave the key) and create it, so
    the user sees where model folders go."""
    default = os.path.join(folder_paths.models_dir, FOLDER)
    if FOLDER in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path(FOLDER, default, is_default=True)
    else:
        folder_paths.folder_names_and_paths[FOLDER] = ([default], set(_EXTENSIONS))
    try:
        os.makedirs(default, exist_ok=True)
    except OSError as err:  # a read-only models folder must not stop the pack from loading
        logging.warning("Plan-X: could not create %s: %s", default, err)


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
    return (
        [EMBEDDED_CHOICE]
        + _bundle_folders((f"{FILES['planner']}/config.json", FILES["tatok"]))
        + [SEMANTICGEN_PLANNER_CHOICE]
    )


def bundle_choices() -> list[str]:
    return [EMBEDDED_CHOICE] + _bundle_folders((FILES["spec"],)) + [SEMANTICGEN_CHOICE]


def branch_choices() -> list[str]:
    files = [f for f in folder_paths.get_filename_list(FOLDER) if f.endswith(".safetensors")]
    return [EMBEDDED_CHOICE] + sorted(files) + [SEMANTICGEN_CHOICE]


def folder_for(choice: str) -> Path:
    """The folder behind a planner / bundle choice; a clear error when it is gone or is not an entry of the
    folder (`..`, an absolute path typed into a workflow). An entry that is a symlink the user made (a model
    on another disk) is followed, as ComfyUI does; the bundle then loads only its own files."""
    if choice == EMBEDDED_CHOICE:
        return EMBEDDED
    if not plain_entry(choice):
        raise FileNotFoundError(
            f"model folder {choice!r} is not an entry of models/{FOLDER} (an absolute path or '..'); pick an entry "
            f"from the list, or move the folder into models/{FOLDER}"
        )
    for root in planx_dirs():
        if (root / choice).is_dir():
            return root / choice
    raise FileNotFoundError(
        f"model folder {choice!r} is not in models/{FOLDER} any more; pick another entry or "
        f"put the folder back (searched: {', '.join(map(str, planx_dirs())) or 'no planx folder'})"
    )


def branch_path(choice: str) -> Path:
    if choice == EMBEDDED_CHOICE:
        return EMBEDDED / FILES["branch"]
    if choice == SEMANTICGEN_CHOICE:
        return SEMANTICGEN_FOLDER / SEMANTICGEN_FILES["branch"]
    path = folder_paths.get_full_path(FOLDER, choice)
    if path is None:
        raise FileNotFoundError(f"semantic-branch file {choice!r} is not in models/{FOLDER}; pick another entry")
    return Path(path)


def semanticgen_folder_of_branch(path: Path) -> Path | None:
    """The SemanticGen folder a branch file belongs to (its folder holds semanticgen.json), else None: a
    Plan-X token branch."""
    folder = Path(path).parent
    return folder if (folder / SEMANTICGEN_FILES["spec"]).is_file() else None


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


def _stamp(folder: Path, names) -> str:
    """A cache key that changes when any of the files is replaced (weights retrained in place)."""
    return f"{folder}:" + ",".join(f"{(folder / n).stat().st_mtime_ns if (folder / n).exists() else 0}" for n in names)


_SEMANTICGEN: dict[str, SemanticGen] = {}


def cached_semanticgen(folder: Path = SEMANTICGEN_FOLDER) -> SemanticGen:
    """The SemanticGen model of a folder (both stages, its text encoder and VAE), loaded once per version
    of its files; the planner, the MODEL loader and the branch share it."""
    key = _stamp(folder, SEMANTICGEN_FILES.values())
    if key not in _SEMANTICGEN:
        _SEMANTICGEN.clear()
        _SEMANTICGEN[key] = SemanticGen.load(folder)
    return _SEMANTICGEN[key]


_DIGESTS: dict[str, str] = {}


def compressor_digest(folder: Path) -> str:
    """The hash of a SemanticGen folder's compressor (what its continuous plans carry as codebook hash)."""
    key = _stamp(folder, [SEMANTICGEN_FILES["compressor"]])
    if key not in _DIGESTS:
        _DIGESTS[key] = load_compressor(folder / SEMANTICGEN_FILES["compressor"]).digest()
    return _DIGESTS[key]


_CODEBOOKS: dict[str, tuple[float, str, torch.Tensor, dict | None]] = {}


def _tatok_files() -> list[Path]:
    """The embedded TA-Tok, then every `*ta_tok*.safetensors` under the planx folders (hidden names, such as a
    copy still under its temp name, left out)."""
    files = [EMBEDDED / FILES["tatok"]]
    for root in planx_dirs():
        files += sorted(p for p in root.rglob("*ta_tok*.safetensors") if not p.name.startswith("."))
    return files


def _codebook_entry(path: Path) -> tuple:
    """(mtime, digest, codebook `[N, D]`, colour table) of one TA-Tok file, cached by mtime."""
    stamp = path.stat().st_mtime
    cached = _CODEBOOKS.get(str(path))
    if cached is None or cached[0] != stamp:
        tatok = load_tatok(path)
        cached = (stamp, tatok.digest(), tatok.codebook().detach().cpu(), tatok.colour_table)
        _CODEBOOKS[str(path)] = cached
    return cached


def codebook_for(plan: Plan) -> torch.Tensor:
    """The codebook `[N, D]` the plan's tokens index, found by hash among the known TA-Tok files."""
    return _tatok_for(plan)[2]


def colour_table_for(plan: Plan) -> dict | None:
    """The colour table ({code: "#rrggbb"}) of the TA-Tok file the plan's hash names, None when it has none."""
    return _tatok_for(plan)[3]


def _tatok_for(plan: Plan) -> tuple:
    want, unreadable = plan.codebook.digest, []
    for path in _tatok_files():
        try:
            cached = _codebook_entry(path)
        except (OSError, CheckpointError) as err:  # one damaged file must not hide the others
            unreadable.append(f"{path}: {err}")
            continue
        if cached[1] == want or (not want and cached[2].shape[0] == plan.codebook.size):
            return cached
    skipped = "; skipped, unreadable: " + "; ".join(unreadable) if unreadable else ""
    raise PlanError(
        f"no TA-Tok file matches the plan's codebook {plan.codebook.describe()}: the plan was made with "
        f"another tokenizer. Put that tokenizer's ta_tok.safetensors in models/{FOLDER}, or re-plan "
        f"with this model's planner{skipped}"
    )
