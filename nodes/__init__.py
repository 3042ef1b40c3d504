"""ComfyUI adapters for planx_core (thin: ComfyUI types in, planx_core calls, ComfyUI types out).

The pack's V3 nodes (comfy_api.latest), listed in NODE_CLASS_MAPPINGS as ComfyUI 0.3.64 registers
them (a module with NODE_CLASS_MAPPINGS never reaches comfy_entrypoint). Importing this package
registers the `planx` models folder.
"""

from .example_inputs import install_example_inputs
from .model_files import register_folder

register_folder()
install_example_inputs()

from .plan_nodes import NODES as _PLAN_NODES  # noqa: E402  (the folder must exist before the schemas list it)
from .render_nodes import NODES as _RENDER_NODES  # noqa: E402

NODES = _PLAN_NODES + _RENDER_NODES
NODE_CLASS_MAPPINGS = {node.define_schema().node_id: node for node in NODES}
NODE_DISPLAY_NAME_MAPPINGS = {node.define_schema().node_id: node.define_schema().display_name for node in NODES}
