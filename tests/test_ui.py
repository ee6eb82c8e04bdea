"""The notebook pickers: they default to the parameters, follow clicks, survive re-runs, and deploy on a click."""

from __future__ import annotations

import pytest

from kit.errors import UnknownChoiceError
from kit.targets.processes import free_port_block
from kit.ui import Selection


@pytest.fixture(autouse=True)
def fresh_kernel():
    """Each test starts as a new kernel would: nothing remembered."""
    Selection.remembered.clear()
    yield
    Selection.remembered.clear()


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


def test_labels_are_shown_whole():
    box = Selection("local", 2).widget()
    for picker in box.children[:3]:
        assert picker.style.description_width == "initial"  # "environment" is not cut to "environm…"


def test_running_the_picker_cell_again_keeps_the_picks_and_says_so(capsys):
    first = Selection("local", 4, "random")
    first.widget().children[1].value = 3
    again = Selection("local", 4, "random")  # the same cell run again, with the same parameters
    assert again.resolve()["replicas"] == 3 and again.kept
    assert "keeping your earlier picks" in capsys.readouterr().out
    other = Selection("local", 3, "random", key="another-notebook")
    assert not other.kept and other.resolve()["replicas"] == 3


@pytest.mark.slow
def test_the_deploy_button_deploys_what_the_pickers_show(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KIT_STATE_DIR", str(tmp_path / "state"))
    port = free_port_block(4)
    sel = Selection("local", 2, "default-plugins", release_postfix="ui-test", gateway_port=port)
    box = sel.widget()
    box.children[1].value = 1  # one replica instead of two
    box.children[2].value = "random"
    button = box.children[3]
    try:
        button.click()  # what a click in JupyterLab does
        st = sel.session().status()
        assert st.ready and st.detail["gateway"] == f"http://127.0.0.1:{port}"
        assert [p["role"] for p in st.detail["processes"]] == ["gateway", "simulator"]
        assert st.detail["scheduler_config"].endswith("random.yaml")
        assert "deployed local with 1 model servers and profile random: ready" in capsys.readouterr().out
    finally:
        sel.session().destroy(say=lambda _m: None)


def test_views_are_redrawn_for_the_new_stack_after_a_deploy_from_the_pickers(monkeypatch):
    """What 02's cells show about the choice follows a Deploy click, in the cells where it was shown."""
    import IPython

    shown = {}

    class Handle:
        def __init__(self, data):
            self.id = len(shown)
            shown[self.id] = data["text/plain"]

        def update(self, data, raw):
            shown[self.id] = data["text/plain"]

    monkeypatch.setattr(IPython, "get_ipython", lambda: object())  # as in a kernel
    monkeypatch.setattr("IPython.display.display", lambda data, raw, display_id: Handle(data))
    sel = Selection("local", 4, "default-plugins")
    sel.show(lambda s: f"{s.env.replicas} replicas, {sel.profile}")
    sel.show(lambda s: 1 / 0)  # a view that fails says so; the others still redraw
    picks = "{'environment': 'local', 'replicas': 4, 'profile': 'default-plugins'}"
    assert shown == {0: "4 replicas, default-plugins", 1: f"(could not show this for {picks}: division by zero)"}
    box = sel.widget()
    box.children[1].value, box.children[2].value = 3, "load-only"
    assert sel.refresh() == 2 and shown[0] == "3 replicas, load-only"


def test_outside_a_notebook_a_view_is_printed_once(capsys):
    sel = Selection("local", 2, "random")
    sel.show(lambda s: f"{s.env.name}: {sel.profile}")
    assert capsys.readouterr().out == "local: random\n" and sel.refresh() == 0
