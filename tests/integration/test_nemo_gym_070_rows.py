"""Every example rollout inside PyPI's nemo-gym 0.7.0 wheel (202 files, one per environment or
agent) read by prepare's scan: no line is a schema reject, and every line of the episode
environments (nemo_user_sim, bbq) is read or rejected with its own reason. The wheel is
downloaded once (pip, no dependencies) into $GYM_DPO_CACHE/nemo-gym-0.7.0/."""

from __future__ import annotations

import collections
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from engines import unavailable

from recipe.iterate import cache
from recipe.prepare import rollouts, scan

pytestmark = pytest.mark.integration
EPISODES = {"resources_servers/nemo_user_sim/", "resources_servers/bbq/"}


@pytest.fixture(scope="module")
def wheel() -> Path:
    folder = cache.base() / "nemo-gym-0.7.0"
    found = sorted(folder.glob("nemo_gym-0.7.0-*.whl"))
    if not found:  # 0.7.0 needs Python >= 3.13.14: its wheel is fetched, not installed
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                               "--python-version", "3.13.14", "-d", str(folder), "nemo-gym==0.7.0"],
                              capture_output=True, text=True, timeout=600)
        found = sorted(folder.glob("nemo_gym-0.7.0-*.whl"))
        if not found:
            unavailable(f"pip download nemo-gym==0.7.0 failed: {done.stderr.strip()[-300:]}")
    return found[-1]


def test_every_example_rollout_of_0_7_reads_without_a_schema_reject(wheel):
    reasons: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    with zipfile.ZipFile(wheel) as archive:
        names = [n for n in archive.namelist() if "example_rollouts" in n and n.endswith(".jsonl")
                 and "materialized_inputs" not in n]
        assert len(names) >= 150
        chunk = rollouts.Chunk(0, "wheel", 0, 0)
        for name in names:
            reader = scan.LineReader(chunk, scan.ScanOptions())
            for number, line in enumerate(archive.read(name).splitlines(), 1):
                reader.read(line, number, 0)
            reasons[name].update(r.reason for r in reader.rejects)
            reasons[name]["read"] += len(reader.rows)
    schema = {name: count["schema"] for name, count in reasons.items() if count["schema"]}
    assert schema == {}, f"schema rejects: {schema}"
    for name, count in reasons.items():
        if any(name.startswith(e) for e in EPISODES):
            assert set(count) <= {"read", "episode_no_prompt", "episode_no_conversation", "mask_sample",
                                  "reward_missing", "reward_null", "no_assistant_output", "empty_response"}, count
    assert reasons["resources_servers/nemo_user_sim/data/example_rollouts.jsonl"]["read"] == 5
    assert reasons["resources_servers/bbq/data/example_rollouts.jsonl"]["episode_no_prompt"] == 5
