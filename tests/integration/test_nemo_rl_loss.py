"""The CPU trainer trains NeMo RL's DPO objective: its loss (TRL's DPOTrainer as recipe/train/local
builds it) on a global batch of real pairs, in micro batches as it trains them, equals NeMo RL
v0.7.0's own `DPOLossFn` (imported from the reference source tree, bench/nemo_rl_loss.py) on the
same pairs and the same policy and reference log-probs, with and without the NLL term of the
chosen reply (`dpo.sft_loss_weight`), per token or summed (`dpo.sft_average_log_probs`), and with
the length-averaged preference term.

The policy is the tiny model moved away from its starting weights (so the rewards are not zero),
the reference those starting weights, as TRL precomputed them. NeMo RL's loss runs in a process
of its own: importing it stubs modules it never calls (see bench/nemo_rl_loss.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from engines import REPO, unavailable

sys.path.insert(0, str(REPO / "tests" / "unit"))
from test_local_runner import child  # noqa: E402
from train_helpers import preference_pair, reference_dpo  # noqa: E402

from tests.conftest import REFERENCE  # noqa: E402

pytest.importorskip("trl")
pytestmark = pytest.mark.integration

CASES = {  # NeMo RL's DPOLossConfig keys (dpo.*), beta 0.1
    "dpo_and_nll_per_token": {"sft_loss_weight": 0.5, "sft_average_log_probs": True,
                              "preference_average_log_probs": False, "preference_loss_weight": 1.0},
    "dpo_and_nll_summed_length_averaged_preference": {
        "sft_loss_weight": 0.2, "sft_average_log_probs": False, "preference_average_log_probs": True,
        "preference_loss_weight": 0.7},
    "dpo_alone": {"sft_loss_weight": 0.0, "sft_average_log_probs": False, "preference_average_log_probs": False,
                  "preference_loss_weight": 1.0},
}
BETA = 0.1


def nemo_rl_src() -> Path:
    src = REFERENCE / "nemo-rl-v0.7.0" / "src"
    if not (src / "nemo_rl" / "algorithms" / "loss" / "loss_functions.py").is_file():
        unavailable(f"no NeMo RL v0.7.0 source tree at {src} (GYM_DPO_REFERENCE, now {REFERENCE})")
    return src


def trainer_batches(folder: Path, settings: dict):
    """The CPU trainer's loss of one global batch of 4 pairs in 2 micro batches, and those micro
    batches for NeMo RL (pairs interleaved, the policy's and the reference's logits)."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    from recipe.train.local import runner

    parent = folder / "nemo-rl" / "dpo.yaml"
    parent.parent.mkdir(parents=True)
    shutil.copyfile(reference_dpo(), parent)
    pairs = [preference_pair(i, "good " + "yes " * (3 * (i % 4)), "bad " + "no " * (2 * ((i * 3) % 5)))
             for i in range(16)]  # replies of different lengths
    path = child(folder, str(parent), train=pairs, dpo={**settings, "reference_policy_kl_penalty": BETA},
                 policy={"train_global_batch_size": 4, "train_micro_batch_size": 2})
    run = runner.load(path, [])
    trainer = runner.build_trainer(run)  # TRL precomputes the reference's log-probs (the starting weights)
    # the starting weights again (a deepcopy of TRL's model would keep its forward bound to the original)
    reference = AutoModelForCausalLM.from_pretrained(run.model_path, dtype=torch.float32).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # the policy some steps later
        for parameter in trainer.model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    model = trainer.model.eval()
    rows = [trainer.train_dataset[i] for i in range(4)]
    micro = [trainer.data_collator(rows[:2]), trainer.data_collator(rows[2:])]
    steps = run.settings.gradient_accumulation_steps
    assert steps == 2
    ours = 0.0
    batches = []
    with torch.no_grad():
        for mb in micro:
            ours += float(trainer.compute_loss(model, mb)) / steps  # as Trainer.training_step scales it
            keep = {k: v for k, v in mb.items() if k not in ("completion_mask", "ref_chosen_logps",
                                                            "ref_rejected_logps")}
            pairs = mb["input_ids"].shape[0] // 2
            order = [i for p in range(pairs) for i in (p, pairs + p)]  # [c0, r0, c1, r1]: NeMo RL's collation
            batches.append({"input_ids": mb["input_ids"][order], "token_mask": mb["completion_mask"][order],
                            "logits": model(**keep).logits[order].float(),
                            "reference_logits": reference(**keep).logits[order].float()})
    # chosen replies of different lengths in one micro batch: a mean over tokens is not one over replies
    chosen = [mb["completion_mask"][: mb["input_ids"].shape[0] // 2].sum(1).tolist() for mb in micro]
    assert any(len(set(lengths)) > 1 for lengths in chosen), chosen
    return ours, batches


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """{case: (the CPU trainer's loss, NeMo RL's metrics)} for every case, NeMo RL in one process."""
    import torch

    src = nemo_rl_src()
    folder = tmp_path_factory.mktemp("nemo_rl_loss")
    ours, cases = {}, {}
    for name, settings in CASES.items():
        loss, batches = trainer_batches(folder / name, settings)
        ours[name] = loss
        cases[name] = {"settings": {**settings, "reference_policy_kl_penalty": BETA}, "micro_batches": batches}
    torch.save(cases, folder / "batches.pt")
    result = subprocess.run([sys.executable, str(REPO / "bench" / "nemo_rl_loss.py"), str(src),
                             str(folder / "batches.pt"), str(folder / "nemo_rl.json")],
                            capture_output=True, text=True, timeout=1200, cwd=folder)
    assert result.returncode == 0, result.stderr[-4000:]
    nemo = json.loads((folder / "nemo_rl.json").read_text())
    assert nemo["nemo_rl"] == "0.7.0"
    return {name: (ours[name], nemo["cases"][name]) for name in CASES}, cases


@pytest.mark.parametrize("case", list(CASES))
def test_the_cpu_trainer_s_loss_is_nemo_rl_s_dpo_loss(compared, case):
    results, _ = compared
    ours, nemo = results[case]
    assert nemo["preference_loss"] > 0.01 and (nemo["sft_loss"] > 1.0 or not CASES[case]["sft_loss_weight"])
    assert ours == pytest.approx(nemo["loss"], rel=1e-5, abs=1e-6), (case, ours, nemo)


def logps(logits, ids):
    import torch

    return torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]


def test_the_plain_torch_objective_is_nemo_rl_s_too(compared):
    """recipe.train.local.loss.objective (what bench/gpu_check.py compares NeMo RL's loss with on a
    GPU) on NeMo RL's own batches: the same preference and SFT terms."""

    from recipe.train.local.loss import objective

    results, cases = compared
    for name, case in cases.items():
        settings, total = case["settings"], {"loss": 0.0, "preference_loss": 0.0, "sft_loss": 0.0}
        for mb in case["micro_batches"]:
            ids, mask = mb["input_ids"], mb["token_mask"][:, 1:].float()
            order = list(range(0, ids.shape[0], 2)) + list(range(1, ids.shape[0], 2))  # back to [chosen; rejected]
            got = objective(logps(mb["logits"], ids)[order], logps(mb["reference_logits"], ids)[order], mask[order],
                            beta=settings[
                "reference_policy_kl_penalty"], preference_weight=settings["preference_loss_weight"],
                sft_weight=settings["sft_loss_weight"], preference_average=settings["preference_average_log_probs"],
                sft_average=settings["sft_average_log_probs"])
            for key in total:
                total[key] += float(got[key]) / len(case["micro_batches"])
        nemo = results[name][1]
        for key in total:
            assert total[key] == pytest.approx(nemo[key], rel=1e-5, abs=1e-6), (name, key, total, nemo)


def test_training_with_the_nll_term_logs_its_parts_under_nemo_rl_s_names(tmp_path):
    import shutil

    from recipe.train.local import metrics, runner

    parent = tmp_path / "nemo-rl" / "dpo.yaml"
    parent.parent.mkdir(parents=True)
    shutil.copyfile(reference_dpo(), parent)
    path = child(tmp_path, str(parent), dpo={**CASES["dpo_and_nll_per_token"], "max_num_steps": 2, "val_period": 0,
                                             "val_at_start": False, "val_at_end": False},
                 policy={"train_global_batch_size": 4, "train_micro_batch_size": 2})
    runner.run(path, [])
    rows = [r for r in metrics.read(tmp_path / "run" / "metrics.jsonl") if "train:loss" in r]
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:  # the logged loss is its weighted parts
        assert row["train:loss"] == pytest.approx(row["train:preference_loss"] + 0.5 * row["train:sft_loss"], rel=1e-4)
