"""The notebook pickers default to the parameters, follow clicks, and reject unknown choices."""

import pytest

from kit.errors import UnknownChoiceError
from kit.ui import Selection


def test_selection_defaults_to_the_parameters_and_validates():
    sel = Selection("local", 4, "random")
    assert sel.resolve() == {"environment": "local", "replicas": 4, "profile": "random"}
    box = sel.widget()
    box.children[1].value = 3  # what a click would do
    assert sel.resolve()["replicas"] == 3
    with pytest.raises(UnknownChoiceError, match="valid choices: agentgateway"):
        Selection("nowhere", 1)
    with pytest.raises(UnknownChoiceError, match="scheduler profile"):
        Selection("local", 1, "fastest")
