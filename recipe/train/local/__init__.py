"""The CPU runner (`python -m recipe.train.local_dpo`): NeMo RL's DPO config run by TRL.

runner: load, build the trainer, train, and the command line; settings: the NeMo RL YAML -> what
TRL is given, and what it ignores; data: the pairs -> the token ids NeMo RL trains; trainer: TRL's
DPOTrainer with NeMo RL's optimizer, scheduler and batching; checkpoints: NeMo RL's `step_N`
layout, retention and resume; metrics: NeMo RL's metric names in `metrics.jsonl`, and the
progress bar.
"""

# "0": no NeMo RL policy/ (DCP weights, tokenizer) in each step_N (launcher=local_cpu reads model/)
POLICY_DCP_ENV = "GYM_DPO_CHECKPOINT_POLICY_DCP"
