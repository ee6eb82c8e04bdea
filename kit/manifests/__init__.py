"""Environments → manifests → validation: pure functions of files, no network and no cluster client.

``environments`` loads and checks an environment; ``render`` turns it into the objects the guide
deploys; ``validate`` checks them offline. ``checked_render`` is the one place that does both, for
every caller that needs valid manifests (the cluster target's plan and deploy, ``kit validate``).
"""

from __future__ import annotations

from kit.errors import NotReadyError
from kit.manifests.environments import Environment
from kit.manifests.render import Rendered, render
from kit.manifests.validate import CrdSchemas, validate_objects


def checked_render(env: Environment, scheduler_config: str | None = None,
                   crds: CrdSchemas | None = None) -> tuple[Rendered, list[str]]:
    """Render and validate (custom resources against ``crds``, by default the pinned CRDs the kit ships);
    return the manifests and the notes on what could not be checked; raise NotReadyError listing every
    problem."""
    rendered = render(env, scheduler_config)
    crds = CrdSchemas.shipped() if crds is None else crds
    problems, notes = validate_objects(rendered.objects, crds)
    if problems:
        raise NotReadyError(problems, f"{len(problems)} problem(s) in the {len(rendered.objects)} objects "
                                      f"rendered for {env.name}")
    return rendered, notes
