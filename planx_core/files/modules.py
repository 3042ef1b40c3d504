"""Model files of this project: safetensors weights with the model's config as JSON in the metadata.

One convention for every Plan-X file kind (semantic branch, DiT with its config, TA-Tok, VAE,
semantic encoder, compressor): `save_module` writes the state dict with `{key: json(config)}`
in the safetensors metadata; `config_in_metadata` reads it back, refusing JSON that is broken or
not an object; `load_module` does both ends for modules built from their config alone, and checks
the file's keys and shapes against the config from the header before a single tensor is read or
a weight is allocated. The metadata keys below are written by released files of this project, so
they never change (old files keep loading).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping

import torch
from torch import nn

from .safetensors import (
    CheckpointError,
    PathLike,
    check_float_weights,
    check_keys,
    check_safetensors_header,
    header_shapes,
    read_safetensors,
    save_safetensors,
)

# metadata key -> what a file carrying it is (for refusals that say which file was picked instead)
FILE_KINDS = {
    "planx_semantic_branch": "a Plan-X semantic-branch file",
    "planx_dit_config": "a Wan DiT with its config",
    "planx_tatok": "a TA-Tok tokenizer",
    "planx_vae": "a video VAE",
    "planx_semantic_encoder": "a semantic encoder (Qwen2.5-VL vision tower)",
    "planx_semantic_compressor": "a semantic compressor",
}


def save_module(
    state: Mapping[str, torch.Tensor],
    path: PathLike,
    *,
    key: str,
    config: Mapping,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write `state` as safetensors with `config` as JSON under metadata `key` (and any other `metadata`)."""
    save_safetensors(state, path, metadata={key: json.dumps(dict(config)), **(metadata or {})})


def file_metadata(path: PathLike) -> dict[str, str]:
    """The string metadata of a safetensors file (after checking its header)."""
    return check_safetensors_header(path).get("__metadata__") or {}


def describe_file_kind(metadata: Mapping[str, str], but_not: str = "") -> str | None:
    """What a Plan-X file is, from its metadata keys ("a TA-Tok tokenizer", ...), or None."""
    return next((what for key, what in FILE_KINDS.items() if key in metadata and key != but_not), None)


def config_in_metadata(metadata: Mapping[str, str], key: str, path: PathLike, fix: str) -> dict | None:
    """The JSON object stored under metadata `key`, None when the key is absent; CheckpointError naming the file
    and `fix` when it is not a JSON object."""
    if key not in metadata:
        return None
    try:
        config = json.loads(metadata[key])
    except (ValueError, RecursionError) as err:
        raise CheckpointError(f"{path}: the '{key}' metadata is not valid JSON ({str(err)[:120]}); {fix}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: the '{key}' metadata is not a JSON object (a {type(config).__name__}); {fix}")
    return config


_KINDS = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


def _fits(annotation: str, value) -> bool:
    """Whether `value` (from JSON) fits a field annotated int, float, str, bool, `X | None` or
    `tuple[X, ...]` (a JSON list); a bool is no number; other annotations are left to the dataclass."""
    if annotation.endswith(" | None"):
        return value is None or _fits(annotation[: -len(" | None")], value)
    if annotation.startswith("tuple[") and annotation.endswith(", ...]"):
        inner = annotation[len("tuple[") : -len(", ...]")]
        return isinstance(value, (list, tuple)) and all(_fits(inner, v) for v in value)
    if annotation not in _KINDS:
        return True
    return isinstance(value, _KINDS[annotation]) and (annotation == "bool" or not isinstance(value, bool))


def check_field_types(cls, data: Mapping, source, what: str, fix: str) -> None:
    """Refuse stored config values of the wrong JSON type (a list for a number, null for a size) with a
    CheckpointError naming the field, before the dataclass or the model builder sees them."""
    for f in dataclasses.fields(cls):
        if f.name in data and not _fits(str(f.type), data[f.name]):
            raise CheckpointError(
                f"{source or what}: {what} field {f.name!r} should be {f.type}, not {data[f.name]!r}; {fix}"
            )


def build_config(cls, data: Mapping, source, what: str, fix: str):
    """A config dataclass from stored fields: unknown fields (a newer Plan-X wrote the file) and values the
    dataclass refuses (wrong type, out of the limits) both become a CheckpointError naming `source` and `fix`."""
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise CheckpointError(
            f"{source or what}: unknown {what} fields {unknown}; the file was written by a newer Plan-X, update Plan-X"
        )
    check_field_types(cls, data, source, what, fix)
    try:
        return cls(**data)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{source or what}: not a valid {what} ({err}); {fix}") from None


def load_module(
    path: PathLike,
    *,
    key: str,
    build: Callable[[dict], nn.Module],
    what: str,
    fix: str,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """A module from a `save_module` file, in eval mode: the config from metadata `key`, `build(config)` on the
    meta device to learn its keys and shapes, those checked against the file's header, and only then the
    weights read and the module built for real. `what` names the file kind in refusals; `fix` says how to
    make a good file."""
    metadata = file_metadata(path)
    config = config_in_metadata(metadata, key, path, fix)
    if config is None:
        other = describe_file_kind(metadata, but_not=key)
        raise CheckpointError(f"{path}: not {what} (no '{key}' metadata){f'; this is {other}' if other else ''}; {fix}")
    try:
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in build(config).state_dict().items()}
    except (TypeError, ValueError, KeyError) as err:
        raise CheckpointError(f"{path}: its '{key}' config cannot build {what} ({err}); {fix}") from None
    header = check_safetensors_header(path)
    check_float_weights(header, expected, path, fix)
    check_keys(
        header_shapes(header),
        expected,
        f"{path}: the weights do not fit the file's own config {config}:",
        f"The file is damaged; {fix}.",
    )
    module = build(config)
    module.load_state_dict(read_safetensors(path, dtype=dtype))
    return module.to(device).eval()
