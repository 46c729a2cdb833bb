"""Base: plain fine-tuning with cross-entropy over the seen classes (§4.1; README "Base")."""

from dfcil_core.learners.api import Learner


class Base(Learner):
    name = "base"
