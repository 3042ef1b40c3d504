"""Flow-matching sampling: sigma schedule, Euler and UniPC solvers, text and plan guidance, render.

Sources: Wan 2.2 (`wan/utils/fm_solvers_unipc.py`, `wan/textimage2video.py`); see `sampling`.

Public API: `shift_sigma`, `flow_sigmas`, `Guidance`, `guided_velocity`, `guidance_runner` (who evaluates
the guidance passes), `initial_noise`,
`sample`, `SamplingInterrupted` (sampling); `SOLVERS`, `make_solver` (solvers); `render`,
`latent_shape`, `pad_text_context`, `make_denoiser` (a DiT bound to the sampler).
"""

from .rendering import latent_shape, make_denoiser, pad_text_context, render
from .sampling import (
    NUM_TRAIN_TIMESTEPS,
    SCHEDULES,
    Guidance,
    SamplingInterrupted,
    flow_sigmas,
    guidance_runner,
    guided_velocity,
    initial_noise,
    sample,
    schedule_sigmas,
    shift_sigma,
    wan_sigmas,
)
from .solvers import SOLVERS, EulerSolver, UniPCSolver, make_solver

__all__ = [
    "NUM_TRAIN_TIMESTEPS",
    "SOLVERS",
    "EulerSolver",
    "Guidance",
    "SamplingInterrupted",
    "UniPCSolver",
    "flow_sigmas",
    "guidance_runner",
    "guided_velocity",
    "initial_noise",
    "latent_shape",
    "make_denoiser",
    "make_solver",
    "pad_text_context",
    "render",
    "sample",
    "SCHEDULES",
    "schedule_sigmas",
    "shift_sigma",
    "wan_sigmas",
]
