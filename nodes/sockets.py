"""What every Plan-X node shares: its menu category and the pack's own socket types.

PLANX_PLAN carries a `planx_core.plan.Plan`; PLANX_PLANNER a loaded planner handle
(`planner_handle`). The type names are part of every saved workflow: never rename them.
"""

from comfy_api.latest import io

CATEGORY = "Plan-X"
PLAN = io.Custom("PLANX_PLAN")
PLANNER = io.Custom("PLANX_PLANNER")
