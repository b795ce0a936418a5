"""Build step of our image: NeMo RL v0.7.0 saves the tokenizer from rank 0 only.

    python docker/nemo_rl_tokenizer_rank0.py /opt/nemo-rl

NeMo RL v0.7.0 writes the tokenizer into every checkpoint (`step_N/policy/tokenizer`) from every
rank: `save_checkpoint` in nemo_rl/utils/native_checkpoint.py (the DTensor worker, the default of
NeMo RL's dpo.yaml) and AutomodelCheckpointManager.save_checkpoint in
nemo_rl/models/automodel/checkpoint.py (`policy.dtensor_cfg._v2=true`) call
`tokenizer.save_pretrained` on one shared folder from each process. The tokenizer is the same on
every rank, and concurrent writers of the same files can deadlock on a hard-mounted NFS share: a
job then hangs at its first checkpoint, with no error. NeMo RL fixed it after v0.7.0
(NVIDIA-NeMo/RL #3504, "guard tokenizer save with rank 0 to avoid NFS deadlock"): rank 0 writes,
every rank then meets at a barrier (all ranks reach this point: the weights' torch DCP save just
before is collective). This applies the same guard to the image's copy (NeMo RL runs from
/opt/nemo-rl, installed editable in its venvs), with code of our own.

Each replaced text must be found exactly once, as v0.7.0 has it: otherwise the build fails here,
naming the file (a newer base image has the fix, or changed the code: drop or redo this step).
"""

from __future__ import annotations

import sys
from pathlib import Path

MARK = "# gym-dpo image: NeMo RL #3504 (after v0.7.0): the tokenizer from rank 0 only"

GUARD = f'''

{MARK}
def save_tokenizer_on_rank0(tokenizer: Any, tokenizer_path: str) -> None:
    """Rank 0 writes the tokenizer (the same on every rank); the others wait until it has."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if not distributed or torch.distributed.get_rank() == 0:
        print(f"Saving tokenizer (or processor) to {{tokenizer_path}}")
        tokenizer.save_pretrained(tokenizer_path)
    if distributed:
        torch.distributed.barrier()
'''

EDITS = {
    "nemo_rl/utils/native_checkpoint.py": [
        ('''        print(f"Saving tokenizer (or processor) to {tokenizer_path}")
        tokenizer.save_pretrained(tokenizer_path)


def load_checkpoint(''', f'''        save_tokenizer_on_rank0(tokenizer, tokenizer_path)
{GUARD}

def load_checkpoint('''),
    ],
    "nemo_rl/models/automodel/checkpoint.py": [
        ('''        if tokenizer_path and tokenizer is not None:
            print(f"Saving tokenizer (or processor) to {tokenizer_path}")
            tokenizer.save_pretrained(tokenizer_path)
''', f'''        if tokenizer_path and tokenizer is not None:
            {MARK}
            from nemo_rl.utils.native_checkpoint import save_tokenizer_on_rank0

            save_tokenizer_on_rank0(tokenizer, tokenizer_path)
'''),
    ],
}


def patch(root: Path) -> list[Path]:
    """Edit the files under `root` (a NeMo RL tree); the files changed. Nothing is written unless
    every edit applies."""
    changed = {}
    for relative, edits in EDITS.items():
        path = root / relative
        if not path.is_file():
            raise SystemExit(f"{path}: no such file: is {root} NeMo RL v0.7.0's folder?")
        text = path.read_text()
        for old, new in edits:
            found = text.count(old)
            if found != 1:
                raise SystemExit(
                    f"{path}: the v0.7.0 text this build step replaces is there {found} times, not once "
                    f"({'already patched' if MARK in text else 'NeMo RL changed it'}): the tokenizer save "
                    "may be guarded upstream already (NVIDIA-NeMo/RL #3504); check it and drop or update "
                    "docker/nemo_rl_tokenizer_rank0.py")
            text = text.replace(old, new)
        compile(text, str(path), "exec")
        changed[path] = text
    for path, text in changed.items():
        path.write_text(text)
    return list(changed)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python docker/nemo_rl_tokenizer_rank0.py NEMO_RL_DIR (/opt/nemo-rl)")
    for path in patch(Path(sys.argv[1])):
        print(f"patched {path}: the tokenizer is saved from rank 0 only (NVIDIA-NeMo/RL #3504)")
