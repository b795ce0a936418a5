"""One TRL contender of bench_peers.py, run as a process of its own for a wall-clock budget.

    python bench/peers_trl.py grpo --model DIR --tasks samples/gym/math_train.jsonl --out DIR \
        --budget-s 3600 --marks-s 600,1200,1800,2400,3000,3600 [--t0 EPOCH] [--no-boxed] [--set key=value ...]

`grpo` is TRL's `GRPOTrainer`, `online_dpo` its `OnlineDPOTrainer` (TRL 1.16 has it in
`trl.experimental.online_dpo`, with reward functions where judges were), both generating on
this CPU with transformers' `generate` (TRL's other generation backends are vLLM, not installed
here, and transformers' continuous batching, a `--set use_transformers_continuous_batching=true`
away). Their reward is the environment's own (peers_reward.MathReward) on the task file's
prompts, read at run time (`responses_create_params.input`, the messages NeMo Gym sends) and its
`expected_answer`. The training values are TRL's defaults but for what the bench fixes
(temperature, output tokens, float32 on the CPU without gradient checkpointing, as gym-dpo's
own CPU trainer runs) and what `--set` changes.

The clock starts at `--t0` (the parent's start, so loading counts) and stops while a checkpoint
is written. At each step's end, a checkpoint is written for every mark the next step would pass
(the policy the contender holds at that mark), and training stops when the next step would pass
the budget. `checkpoints.json` lists them (mark, elapsed seconds, step, rollouts generated),
`steps.jsonl` every step (elapsed, rollouts, mean train reward).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers_reward import MathReward  # noqa: E402

ALGOS = ("grpo", "online_dpo")


def read_tasks(path: Path) -> list[dict]:
    """The task file's prompts (role and content of each message) and answers."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        task = json.loads(line)
        try:
            messages = task["responses_create_params"]["input"]
            prompt = [{"role": m["role"], "content": m["content"]} for m in messages]
            rows.append({"prompt": prompt, "expected_answer": str(task["expected_answer"])})
        except (KeyError, TypeError) as missing:
            raise SystemExit(f"{path}:{number}: a task needs responses_create_params.input (messages with role "
                             f"and content) and expected_answer ({missing!r} is missing)") from None
    return rows


def parse_sets(items: list[str]) -> dict:
    values = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item}: give key=value (a field of TRL's config)")
        values[key] = yaml.safe_load(value)
    return values


def config(algo: str, out: Path, max_tokens: int, temperature: float, sets: dict):
    common = dict(output_dir=str(out / "trainer"), use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
                  report_to=[], save_strategy="no", logging_steps=1, max_steps=1_000_000, seed=0,
                  remove_unused_columns=False, dataloader_num_workers=0)
    if algo == "grpo":
        from trl import GRPOConfig

        fixed = dict(temperature=temperature, max_completion_length=max_tokens, top_p=1.0, top_k=0, min_p=None)
        return GRPOConfig(**{**common, **fixed, **sets})
    from trl.experimental.online_dpo import OnlineDPOConfig

    fixed = dict(temperature=temperature, max_new_tokens=max_tokens, top_p=1.0, top_k=0, min_p=None)
    return OnlineDPOConfig(**{**common, **fixed, **sets})


def trainer(algo: str, model: str, args, dataset, reward: MathReward, callback):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    policy = AutoModelForCausalLM.from_pretrained(model, dtype="float32")
    if algo == "grpo":
        from trl import GRPOTrainer

        return GRPOTrainer(model=policy, reward_funcs=reward.trl, args=args, train_dataset=dataset,
                           processing_class=tokenizer, callbacks=[callback])
    from trl.experimental.online_dpo import OnlineDPOTrainer

    return OnlineDPOTrainer(model=policy, reward_funcs=reward.trl, args=args, train_dataset=dataset,
                            processing_class=tokenizer, callbacks=[callback])


def make_clock(t0: float, marks: list[float], budget: float, out: Path, reward: MathReward):
    from transformers import TrainerCallback

    class WallClock(TrainerCallback):
        """Checkpoints at wall-clock marks of the contender's own run; stops before the budget."""

        def __init__(self):
            self.paused, self.last, self.saved, self.trainer = 0.0, None, [], None

        def elapsed(self) -> float:
            return time.time() - t0 - self.paused

        def save(self, state, due: list[float]) -> None:
            started = time.time()
            folder = out / "checkpoints" / f"mark_{int(due[0])}"
            self.trainer.save_model(str(folder))
            self.trainer.processing_class.save_pretrained(str(folder))
            self.keep({"marks_s": due, "elapsed_s": round(self.elapsed(), 1), "step": state.global_step,
                       "rollouts": reward.scored, "path": str(folder)})
            self.paused += time.time() - started

        def keep(self, entry: dict) -> None:
            self.saved.append(entry)
            partial = out / ".checkpoints.json.partial"
            partial.write_text(json.dumps(self.saved, indent=2) + "\n")
            os.replace(partial, out / "checkpoints.json")

        def on_train_begin(self, args, state, control, **kwargs):
            self.last = self.elapsed()

        def on_step_end(self, args, state, control, **kwargs):
            now = self.elapsed()
            step_s, self.last = now - self.last, now
            with open(out / "steps.jsonl", "a") as handle:
                handle.write(json.dumps({"step": state.global_step, "elapsed_s": round(now, 1),
                                         "step_s": round(step_s, 1), "rollouts": reward.scored}) + "\n")
            taken = {m for entry in self.saved for m in entry["marks_s"]}
            due = [m for m in marks if m not in taken and now + step_s > m]
            passed = [m for m in due if m < now]
            if passed and state.global_step == 1:  # during the first step it held its starting policy
                self.keep({"marks_s": passed, "elapsed_s": 0.0, "step": 0, "rollouts": 0, "path": None})
                due = [m for m in due if m >= now]
            if due:  # a mark this step passed (a slower step than the one before) gets this checkpoint, late
                self.save(state, due)
            if now + step_s > budget:
                control.should_training_stop = True
            return control

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs:
                with open(out / "log.jsonl", "a") as handle:
                    handle.write(json.dumps({"step": state.global_step, "elapsed_s": round(self.elapsed(), 1),
                                             **logs}) + "\n")

    return WallClock()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("algo", choices=ALGOS)
    parser.add_argument("--model", required=True, help="the starting policy, a Hugging Face folder")
    parser.add_argument("--tasks", type=Path, required=True, help="NeMo Gym task file (the train tasks)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget-s", type=float, required=True)
    parser.add_argument("--marks-s", required=True, help="comma-separated checkpoint marks, seconds")
    parser.add_argument("--t0", type=float, default=None, help="epoch seconds the clock starts at (default: now)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--no-boxed", action="store_true", help="NeMo Gym 0.4.0's rule (no \\boxed{} needed)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a TRL config field")
    args = parser.parse_args(argv)
    t0 = args.t0 or time.time()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    marks = sorted({float(m) for m in args.marks_s.split(",") if m.strip()} | {args.budget_s})
    args.out.mkdir(parents=True, exist_ok=True)
    from datasets import Dataset

    dataset = Dataset.from_list(read_tasks(args.tasks))
    reward = MathReward(boxed=not args.no_boxed)
    settings = config(args.algo, args.out, args.max_tokens, args.temperature, parse_sets(args.set))
    clock = make_clock(t0, marks, args.budget_s, args.out, reward)
    job = trainer(args.algo, args.model, settings, dataset, reward, clock)
    clock.trainer = job
    (args.out / "config.json").write_text(json.dumps(settings.to_dict(), indent=2, default=str) + "\n")
    job.train()
    print(json.dumps({"algo": args.algo, "elapsed_s": round(clock.elapsed(), 1), "steps": job.state.global_step,
                      "rollouts": reward.scored, "checkpoints": len(clock.saved)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
