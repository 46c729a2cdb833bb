"""The learner of every method: one line each; the key is the id of `dfcil_core.methods.METHODS`."""

from __future__ import annotations

from dfcil_core.config import ConfigError
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
from dfcil_core.learners.rdfcil import RDFCIL
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
    "rdfcil": RDFCIL,
}


def learner_class(method: str) -> type[Learner]:
    if method not in LEARNERS:
        raise ConfigError(f"unknown method {method!r}; expected one of {sorted(LEARNERS)}")
    return LEARNERS[method]
