"""The method registry: one line per method; the key is the id used in config, paths, MLflow and tables."""

from __future__ import annotations

from dfcil_core.config import ConfigError, deep_merge
from dfcil_core.learners.abd import ABD
from dfcil_core.learners.api import Learner
from dfcil_core.learners.base import Base
from dfcil_core.learners.bic import BiC
from dfcil_core.learners.deep_inversion import DeepInversion
from dfcil_core.learners.dgr import DGR
from dfcil_core.learners.e2e import E2E
from dfcil_core.learners.lwf import LwF
from dfcil_core.learners.lwf_coreset import LwFCoreset
from dfcil_core.learners.lwf_mc import LwFMC
from dfcil_core.learners.lwf_synthetic import LwFSynthetic
from dfcil_core.learners.naive_rehearsal import NaiveRehearsal
from dfcil_core.learners.upper_bound import UpperBound

LEARNERS: dict[str, type[Learner]] = {
    "upper_bound": UpperBound,
    "base": Base,
    "naive_rehearsal": NaiveRehearsal,
    "lwf": LwF,
    "lwf_mc": LwFMC,
    "lwf_coreset": LwFCoreset,
    "e2e": E2E,
    "bic": BiC,
    "dgr": DGR,
    "deep_inversion": DeepInversion,
    "lwf_synthetic": LwFSynthetic,
    "abd": ABD,
}

# Labels for tables and plots only; everything else uses the id.
DISPLAY_NAMES = {
    "upper_bound": "UB",
    "base": "Base",
    "naive_rehearsal": "Naive Rehearsal",
    "lwf": "LwF",
    "lwf_mc": "LwF.MC",
    "lwf_coreset": "LwF (coreset)",
    "e2e": "E2E",
    "bic": "BiC",
    "dgr": "DGR",
    "deep_inversion": "DeepInversion",
    "lwf_synthetic": "LwF-Synthetic",
    "abd": "ABD",
}


def learner_class(method: str) -> type[Learner]:
    if method not in LEARNERS:
        raise ConfigError(f"unknown method {method!r}; expected one of {sorted(LEARNERS)}")
    return LEARNERS[method]


def resolve_hyperparameters(method: str, overrides: dict) -> dict:
    """The method's paper defaults with the experiment's overrides; unknown keys are errors.
    A nested `train` dict overrides the experiment's training settings for this method only."""
    defaults = learner_class(method).defaults
    unknown = sorted(set(overrides) - set(defaults) - {"train"})
    if unknown:
        raise ConfigError(f"method {method!r} has no setting(s) {unknown}; known: {sorted(defaults)}")
    return deep_merge(defaults, overrides)
