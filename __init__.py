"""Plan-X for ComfyUI: the pack's entry point.

ComfyUI imports this file when the pack sits in `custom_nodes/`. Nodes are registered only when
ComfyUI itself is importable; everywhere else (tests, the command line) use `planx_core` directly.
"""
import importlib.util

WEB_DIRECTORY = "./web"
NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}

if importlib.util.find_spec("comfy_api") is not None:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: F811

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
