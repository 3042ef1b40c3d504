"""Plan-X for ComfyUI: the pack's entry point.

ComfyUI imports this file when the pack sits in `custom_nodes/`. Nodes are registered only when
ComfyUI itself is importable; everywhere else (tests, the command line) use `planx_core` directly.
ComfyUI does not put a pack's folder on sys.path, so it is added here for `planx_core` (unless an
installed planx_core is importable already).
"""

import importlib.util
import os
import sys

WEB_DIRECTORY = "./web"
NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}

if importlib.util.find_spec("comfy_api") is not None:
    if importlib.util.find_spec("planx_core") is None:
        sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # last: ComfyUI has its own `nodes`
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: F811

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
