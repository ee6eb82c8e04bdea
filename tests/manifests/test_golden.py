"""The guide's environments render byte for byte as they did before today's llm-d track was added.

``tests/fixtures/golden_renders/<env>.yaml`` is ``kit render -e <env>`` captured before the second
release track existed. A change to these files is a change to what users of the guide deploy: make
it on purpose, regenerate with ``python -m tests.manifests.test_golden``, and say why in the commit.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from kit.manifests.environments import DEFAULT_NAMESPACE, DEFAULT_POSTFIX, load_environment
from kit.manifests.render import render, to_yaml

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden_renders"
# (file stem, environment, namespace, postfix): every guide environment, and one with other names.
CASES = [(p.stem, p.stem, DEFAULT_NAMESPACE, DEFAULT_POSTFIX) for p in sorted(GOLDEN.glob("*.yaml"))
         if "@" not in p.stem]
CASES.append(("istio@team-a@blue", "istio", "team-a", "blue"))


def current(env: str, namespace: str, postfix: str) -> str:
    return to_yaml(render(load_environment(env, namespace=namespace, postfix=postfix)).objects)


def test_every_guide_environment_has_a_golden_render():
    from kit.manifests.environments import available

    envs = [load_environment(n) for n in available()]
    guide = {e.name for e in envs if e.target == "cluster" and e.release == "guide"}
    assert guide == {stem for stem, env, *_ in CASES if stem == env}


@pytest.mark.parametrize(("stem", "env", "namespace", "postfix"), CASES, ids=[c[0] for c in CASES])
def test_the_guide_renders_byte_for_byte_as_before(stem, env, namespace, postfix):
    assert current(env, namespace, postfix) == (GOLDEN / f"{stem}.yaml").read_text()


if __name__ == "__main__":  # regenerate: only when a change to the guide's objects is meant
    for stem, env, namespace, postfix in CASES:
        (GOLDEN / f"{stem}.yaml").write_text(current(env, namespace, postfix))
        print(f"wrote {GOLDEN / stem}.yaml", file=sys.stderr)
