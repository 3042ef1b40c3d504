"""ComfyUI adapters for planx_core (thin: ComfyUI types in, planx_core calls, ComfyUI types out).

The node set (Load Planner, Generate Semantic Plan, Edit Plan Tokens, Inject 3D RoPE Guidance,
Plan-X Sampler and their companions) is not written yet; until then the pack registers nothing.
"""
NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
