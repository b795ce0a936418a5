"""Every real NeMo Gym rollouts file of ../shared/reference/nemo-gym: what each must give.

None of them holds two comparable rollouts with different rewards (reference README), so each
must give no pair, and for the reason its README names.
"""

import pytest

from tests.conftest import REFERENCE, read_jsonl

EXPECTED = {
    # file: (outcomes by line, reasons no pair)
    "tool_call_multireward.jsonl": {"no_comparable_rollout": 5},   # five tasks
    "blackjack.jsonl": {"no_comparable_rollout": 5},   # one task index, five different deals
    "tau2.jsonl": {"no_comparable_rollout": 5},
    "competitive_coding_challenges.jsonl": {"tie": 5},   # one task, all rewards 0
    "mcqa.jsonl": {"no_comparable_rollout": 5},   # no task index: grouped by context
    "anyswe_agent_claude_code.jsonl": {"rejected:empty_context": 5},
    "math_with_judge.jsonl": {"no_comparable_rollout": 5},
    "aalcr.jsonl": {"tie": 5},   # two tasks, equal rewards inside each
    "genrm_compare.jsonl": {"rejected:reward_missing": 5},
    "grl_sokoban.jsonl": {"no_comparable_rollout": 5},
}


def outcomes(manifest):
    counts = manifest["counts"]
    found = {k: v for k, v in counts["unpaired"].items() if v}
    found.update({f"rejected:{k}": v for k, v in counts["rejected"].items()})
    if counts["paired"]:
        found["paired"] = counts["paired"]
    return found


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_reference_file(name, prepare):
    manifest, out = prepare(REFERENCE / "nemo-gym" / name)
    assert outcomes(manifest) == EXPECTED[name]
    assert manifest["counts"]["lines"] == 5
    assert (out / "train.jsonl").read_bytes() == b"" and (out / "val.jsonl").read_bytes() == b""
    assert len(read_jsonl(out / "rejects.jsonl")) == sum(v for k, v in EXPECTED[name].items() if k.startswith("rejected"))


def test_reference_rollouts_convert_to_the_expected_shapes():
    """Multi-turn and tool-use files give trajectories; single-turn files give text."""
    from recipe.prepare import rollouts, scan

    shapes = {}
    for name in ("blackjack.jsonl", "tool_call_multireward.jsonl", "tau2.jsonl", "math_with_judge.jsonl",
                 "grl_sokoban.jsonl", "mcqa.jsonl", "competitive_coding_challenges.jsonl"):
        decoded = rollouts.Reader().decode((REFERENCE / "nemo-gym" / name).read_bytes().splitlines()[0])
        context, response = scan.convert(*decoded, scan.ScanOptions())
        shapes[name] = (context[0]["role"], "text" if isinstance(response, str) else response[-1]["role"])
        if not isinstance(response, str):
            assert response[-1]["role"] == "assistant"
    assert shapes["tool_call_multireward.jsonl"] == ("system", "assistant")  # developer -> system
    assert shapes["blackjack.jsonl"] == ("system", "assistant")
    assert shapes["competitive_coding_challenges.jsonl"] == ("user", "text")  # input is a plain string
    assert shapes["math_with_judge.jsonl"][1] == "text"
