"""ipywidgets pickers for JupyterLab that default to the notebook's parameters.

Headless runs never display them, and an untouched picker gives exactly the parameters, so a
papermill run and a click-through run the same thing. Widgets only set values; the notebook's next
cell reads them with ``resolve()`` and does the work.
"""

from __future__ import annotations

from typing import Any

from kit.errors import UnknownChoiceError
from kit.manifests.environments import available
from kit.paths import scheduler_profiles


class Selection:
    """Environment (gateway + hardware), replicas and scheduler profile."""

    def __init__(self, environment: str, replicas: int, profile: str = "default-plugins"):
        envs = available()
        if environment not in envs:
            raise UnknownChoiceError("environment", environment, envs)
        if profile not in scheduler_profiles():
            raise UnknownChoiceError("scheduler profile", profile, scheduler_profiles())
        self.values: dict[str, Any] = {"environment": environment, "replicas": replicas, "profile": profile}
        self._widgets: dict[str, Any] = {}

    def widget(self):
        import ipywidgets as w  # only when someone is there to click

        envs = available()
        self._widgets = {
            "environment": w.Dropdown(options=[(f"{k}: {v}", k) for k, v in envs.items()],
                                      value=self.values["environment"], description="environment",
                                      layout=w.Layout(width="95%")),
            "replicas": w.IntSlider(value=self.values["replicas"], min=1, max=8, description="replicas"),
            "profile": w.Dropdown(options=scheduler_profiles(), value=self.values["profile"], description="scheduler"),
        }
        return w.VBox(list(self._widgets.values()))

    def resolve(self) -> dict[str, Any]:
        """The widgets' values if they were shown, else the parameters."""
        if self._widgets:
            self.values = {k: wid.value for k, wid in self._widgets.items()}
        return dict(self.values)
