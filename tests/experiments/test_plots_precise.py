"""The stale-picks figure: what the prefix index believed against what the servers had cached."""

from kit.experiments import plots
from kit.experiments.results import Comparison, ProfileRun, RequestResult, summarize


def run(profile, rows):
    requests = [RequestResult(200, started=float(i), endpoint="h:1", prompt_tokens=100, cached_tokens=c,
                              request_id=f"{profile}{i}") for i, (_, c) in enumerate(rows)]
    return ProfileRun(profile, summarize(requests, 1.0, {}), requests, [], None), {
        f"{profile}{i}": b for i, (b, _) in enumerate(rows)}


def test_a_pick_believed_held_but_not_found_counts_as_stale():
    approx, approx_beliefs = run("default-plugins", [(0.0, 0), (1.0, 90), (0.95, 10), (1.0, 0)])
    precise, precise_beliefs = run("precise", [(0.0, 0), (1.0, 90), (0.0, 10), (1.0, 95)])
    cmp = Comparison({}, {}, "local", runs=[approx, precise])
    fig = plots.stale_picks(cmp, {"default-plugins": approx_beliefs, "precise": precise_beliefs})
    scatter, line, _, line2 = fig.data
    assert list(scatter.x) == [0.0, 1.0, 0.95, 1.0] and list(scatter.y) == [0.0, 0.9, 0.1, 0.0]
    assert list(line.y) == [0, 0, 1, 2] and list(line.x) == [0.0, 1.0, 2.0, 3.0]
    assert list(line2.y) == [0, 0, 0, 0]
