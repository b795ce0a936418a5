"""Resuming a run folder's checkpoints only on the pairs they were trained on.

`stage=train run_dir=RUN` resumes the latest `step_N` of RUN's checkpoint folder (NeMo RL and the
CPU runner both do). With other pairs (`data.output_dir=NEW`) that would continue, or at the last
step silently end, a training of the old pairs while the run folder names the new ones. The
pairs a run folder's checkpoints were trained on are in its provenance.json (written at each
launch; a launch on other pairs is refused before anything is written, so it always describes
the checkpoints): other pairs are refused with both shown, unless `train.fresh_start=true`, which
moves the old checkpoints aside and trains from step 0.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from recipe import report
from recipe.errors import RecipeError
from recipe.run_files import step_folders
from recipe.train.prepared import PreparedData

PAIR_FILES = ("train", "val")


def _describe(data: dict) -> str:
    digests = data.get("sha256") or {}
    return ", ".join(f"{split} sha256 {str(digests.get(split))[:12]}…" for split in PAIR_FILES) + \
        f" ({data.get('train_pairs')} train pairs, {data.get('folder')})"


def check(run_dir: Path, checkpoint_dir: Path, data: PreparedData, fresh_start: bool) -> None:
    """Refuse (or with `fresh_start`, set aside) checkpoints trained on other pairs than `data`."""
    steps = step_folders(checkpoint_dir)
    if not steps:
        return
    provenance = run_dir / "provenance.json"
    try:
        before = json.loads(provenance.read_text())["data"]
    except (OSError, ValueError, KeyError, TypeError):
        before = None
    now = {"folder": str(data.folder), "train_pairs": data.train_pairs,
           "sha256": {split: data.hashes.get(split) for split in PAIR_FILES}}
    if before is not None and all((before.get("sha256") or {}).get(s) == now["sha256"][s] for s in PAIR_FILES):
        return
    last = steps[-1][1]
    then = (f"they were trained on {_describe(before)}" if before is not None else
            f"{provenance} does not say which pairs they were trained on")
    if not fresh_start:
        raise RecipeError(f"{checkpoint_dir} holds checkpoints up to {last.name}, and {then}; this run's pairs are "
                          f"{_describe(now)}. Resuming would train the old run on other pairs: give a new run_dir, "
                          "or add train.fresh_start=true to move those checkpoints aside and start from step 0")
    aside = checkpoint_dir.with_name(f"{checkpoint_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
    os.rename(checkpoint_dir, aside)
    report.console.print(f"train.fresh_start=true: {checkpoint_dir} ({then}) moved to {aside}; training "
                         "starts from step 0", highlight=False, soft_wrap=True)


def refuse_early(cfg) -> None:
    """`check` without `fresh_start`'s move, before Hydra rewrites RUN/.hydra/ (the CLI's RunStart
    callback): a refused `stage=train run_dir=RUN` leaves the folder as it was. Only when RUN holds
    checkpoints, so only a resume reads the pairs twice (the stage reads them again)."""
    from recipe.train import nemo_rl, prepared

    if cfg.train.get("fresh_start") or not step_folders(checkpoint_dir := nemo_rl.checkpoint_dir(cfg)):
        return
    run_dir = Path(str(cfg.run_dir)).expanduser().absolute()
    data = prepared.load(cfg.data.output_dir, allow_edited=bool(cfg.train.allow_edited_data))
    check(run_dir, checkpoint_dir, data, fresh_start=False)
