"""Samplers, one per file, each matching a diffusers 0.42.1 scheduler class.

`make_scheduler(name, config)` builds what `DiffusersClass.from_config(config, **forced)` builds,
with `config` the model's `scheduler/scheduler_config.json` (whatever class it names): keys the
class knows are taken, missing keys take that class's defaults, others are ignored.

    ddim            DDIMScheduler (eta = 0)
    pndm            PNDMScheduler (PLMS; PRK warm-up unless skip_prk_steps)
    euler           EulerDiscreteScheduler
    euler-a         EulerAncestralDiscreteScheduler
    dpm++2m         DPMSolverMultistepScheduler, algorithm_type dpmsolver++, solver_order 2
    dpm++2m-karras  the same with use_karras_sigmas
    lcm             LCMScheduler
    ddpm            DDPMScheduler
"""

from ..errors import ConfigError
from .base import Scheduler
from .ddim import DDIMScheduler
from .ddpm import DDPMScheduler
from .dpm_solver_multistep import DPMSolverMultistepScheduler
from .euler import EulerDiscreteScheduler
from .euler_ancestral import EulerAncestralDiscreteScheduler
from .lcm import LCMScheduler
from .pndm import PNDMScheduler

_DPM_2M = dict(algorithm_type="dpmsolver++", solver_order=2)

# name -> (class, options the name itself fixes, whatever the config says)
_REGISTRY = {
    "ddim": (DDIMScheduler, {}),
    "pndm": (PNDMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler-a": (EulerAncestralDiscreteScheduler, {}),
    "dpm++2m": (DPMSolverMultistepScheduler, dict(_DPM_2M, use_karras_sigmas=False)),
    "dpm++2m-karras": (DPMSolverMultistepScheduler, dict(_DPM_2M, use_karras_sigmas=True)),
    "lcm": (LCMScheduler, {}),
    "ddpm": (DDPMScheduler, {}),
}

SCHEDULERS = tuple(_REGISTRY)


def make_scheduler(name, config=None) -> Scheduler:
    """The scheduler called `name` (one of SCHEDULERS) configured from a scheduler_config.json dict."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown scheduler {name!r}; use one of {', '.join(SCHEDULERS)}")
    cls, forced = _REGISTRY[name]
    return cls(config, **forced)


def scheduler_for(config: dict) -> str:
    """The name of the scheduler a model ships with (its scheduler_config.json's _class_name), PNDM
    for a class sdweb does not have (SD 1.x's own)."""
    cls = config.get("_class_name")
    name = next((n for n, (c, _) in _REGISTRY.items() if c.__name__ == cls), "pndm")
    if name == "dpm++2m" and config.get("use_karras_sigmas"):
        name = "dpm++2m-karras"
    return name


def forced_options(name) -> dict:
    """The diffusers keyword arguments that `name` fixes on top of the model's config."""
    return dict(_REGISTRY[name][1])


__all__ = ["SCHEDULERS", "Scheduler", "make_scheduler", "scheduler_for", "forced_options"]
