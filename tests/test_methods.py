"""The torch-free method spec (dfcil_core/methods.py) is the one list of methods: the learners, the config schema
and the tables all agree with it."""

import yaml

from dfcil_core.learners import LEARNERS
from dfcil_core.methods import METHODS, display_name
from test_workflow import REPO


def test_every_method_has_one_learner_named_by_its_id():
    assert list(LEARNERS) == list(METHODS)
    assert all(cls.name == method for method, cls in LEARNERS.items())


def test_the_schema_accepts_exactly_the_spec_s_methods():
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    assert schema["$defs"]["method_id"]["enum"] == list(METHODS)


def test_display_names_are_unique_and_unknown_ids_are_shown_as_they_are():
    names = [display_name(m) for m in METHODS]
    assert len(set(names)) == len(names) and display_name("mine") == "mine"
