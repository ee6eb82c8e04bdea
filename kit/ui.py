"""ipywidgets pickers for JupyterLab that default to the notebook's parameters.

Headless runs never display them, and an untouched picker gives exactly the parameters, so a
papermill run and a click-through run the same thing. The pickers survive "Run All" and re-runs:
picks are remembered for the life of the kernel, and running the cell again keeps them (and says so).
A **Deploy** button under the pickers deploys what they show, so changing a choice never needs
"run all below": what the notebook shows about the choice (``Selection.show``: the plan, the status, the
summary) is redrawn for the new stack after each click, in the cells where it was first shown.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from kit.errors import UnknownChoiceError
from kit.manifests.environments import available
from kit.paths import scheduler_profiles

if TYPE_CHECKING:
    from kit.notebook import Session
    from kit.targets import Status

WIDE = {"description_width": "initial"}


class Selection:
    """Environment (gateway + hardware), replicas and scheduler profile, plus the fixed notebook parameters
    (namespace, release postfix, model, gateway port) needed to open a session on the choice."""

    remembered: ClassVar[dict[str, dict[str, Any]]] = {}  # picks by key, for the kernel's lifetime

    def __init__(self, environment: str, replicas: int, profile: str = "default-plugins", *,
                 namespace: str | None = None, release_postfix: str | None = None, model: str | None = None,
                 gateway_port: int = 0, key: str = "deploy"):
        envs = available()
        if environment not in envs:
            raise UnknownChoiceError("environment", environment, envs)
        if profile not in scheduler_profiles():
            raise UnknownChoiceError("scheduler profile", profile, scheduler_profiles())
        self.key = key
        self.fixed = {"namespace": namespace or None, "release_postfix": release_postfix or None,
                      "model": model or None, "gateway_port": gateway_port}
        params = {"environment": environment, "replicas": replicas, "profile": profile}
        before = self.remembered.get(key)
        self.kept = bool(before) and before != params
        self.values: dict[str, Any] = dict(before) if self.kept else params
        if self.kept:
            print(f"keeping your earlier picks {self.values} (the parameters say {params}); change them above")
        self._widgets: dict[str, Any] = {}
        self._views: list[tuple[Any, Callable[[Session], Any]]] = []  # (display handle, view), redrawn on Deploy

    def show(self, view: Callable[[Session], Any]) -> None:
        """Show ``view(session on the picks)`` (text, or a table from ``kit.table``) here, and redraw it here after
        every Deploy from the pickers, so no cell goes on describing a stack that was replaced. Outside a
        notebook it is printed once."""
        from IPython import get_ipython

        text = self._render(view)
        if get_ipython() is None:
            print(text)
            return
        from IPython.display import display

        self._views.append((display({"text/plain": text}, raw=True, display_id=True), view))

    def _render(self, view: Callable[[Session], Any]) -> str:
        try:
            return str(view(self.session()))
        except Exception as err:  # a view that fails says why, and the others still redraw
            return f"(could not show this for {self.values}: {err})"

    def refresh(self) -> int:
        """Redraw every view shown so far for the current picks; returns how many."""
        for handle, view in self._views:
            handle.update({"text/plain": self._render(view)}, raw=True)
        return len(self._views)

    def widget(self):
        """The pickers and a Deploy button (which deploys what they show and prints what it did)."""
        import ipywidgets as w  # only when someone is there to click

        envs = available()
        self._widgets = {
            "environment": w.Dropdown(options=[(f"{k}: {v}", k) for k, v in envs.items()],
                                      value=self.values["environment"], description="environment",
                                      style=WIDE, layout=w.Layout(width="95%")),
            "replicas": w.IntSlider(value=self.values["replicas"], min=1, max=8, description="replicas", style=WIDE),
            "profile": w.Dropdown(options=scheduler_profiles(), value=self.values["profile"],
                                  description="scheduler profile", style=WIDE, layout=w.Layout(width="60%")),
        }
        for wid in self._widgets.values():
            wid.observe(lambda _change: self.resolve(), names="value")
        button = w.Button(description="Deploy", button_style="primary", icon="rocket",
                          tooltip="deploy what the pickers show (replaces what this postfix runs)")
        out = w.Output()

        def click(_b: Any) -> None:
            with out:
                out.clear_output()
                self.deploy()
                if self.refresh():
                    print("the cells below that describe the stack now show this one")

        button.on_click(click)
        return w.VBox([*self._widgets.values(), button, out])

    def resolve(self) -> dict[str, Any]:
        """The widgets' values if they were shown, else the picks; remembered for the next run of the cell."""
        if self._widgets:
            self.values = {k: wid.value for k, wid in self._widgets.items()}
        self.remembered[self.key] = dict(self.values)
        return dict(self.values)

    @property
    def profile(self) -> str:
        return self.resolve()["profile"]

    def session(self) -> Session:
        """A session on the current picks."""
        from kit.notebook import session

        v = self.resolve()
        return session(v["environment"], replicas=v["replicas"], **self.fixed)

    def deploy(self, say: Any = print) -> Status:
        """Deploy the current picks (idempotent) and print what runs."""
        s = self.session()
        st = s.deploy(scheduler_config=self.profile, say=say)
        say(f"deployed {s.env.name} with {s.env.replicas} model servers and profile {self.profile}: "
            f"{'ready' if st.ready else 'not ready'}")
        return st
