"""The one error type of the plan boundary: a plan, an edit list or a plan file that cannot be used."""


class PlanError(ValueError):
    """A plan that cannot be used: the message names the keyframe / cell / field and the fix."""
