"""NeMo RL's own DPO loss (`DPOLossFn`, nemo_rl/algorithms/loss/loss_functions.py) imported from a
NeMo RL source tree, on any machine with torch and transformers: no NeMo RL install, no GPU.

    from nemo_rl_loss import load
    nemo = load("/path/to/nemo-rl-v0.7.0/src")     # nemo.DPOLossFn, nemo.DPOLossConfig, nemo.prepare_loss_input

The loss module itself needs only torch and pydantic, but importing it runs NeMo RL's package
`__init__`s on the way (nemo_rl.algorithms.utils imports nemo_rl.models.policy, which imports the
generation and logging code). What those import-time lines need and this loss never calls is
stubbed, and only when it is not installed:
  - STUBBED: ZeroMQ, NVML, FastAPI/uvicorn (vLLM's worker and the generation servers), the metric
    loggers (MLflow, SwanLab, W&B, prometheus_client, and torch.utils.tensorboard without the
    tensorboard package): modules whose every name is a placeholder class (a decorator made of one
    hands back what it decorates). The loss never reaches them, and its value is checked against
    an independent formula (recipe/train/local/loss.py) wherever it is used;
  - `load(src, stub_missing=True)` (bench/gpu_check.py, on a machine with other packages) also
    stubs any other module the import finds missing, one at a time, but for torch, transformers
    and pydantic (DPOLossConfig is a pydantic model);
  - NeMo RL v0.7.0's nemo_rl/models/policy/__init__.py asserts transformers < 5.12 at import: it
    guards a patch of AutoTokenizer.from_pretrained (deepseek_v3 tokenizers), not the loss. With a
    newer transformers the import sees NeMo RL's own pin's version ("5.8.1"), and the patched
    from_pretrained and the true version are put back right after.
`load()` says what it stubbed (`nemo.stubbed`). Plain Python, for bench/gpu_check.py and the tests
(tests/unit/test_nemo_rl_loss.py), which run it in a process of their own.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path

STUBBED = ("zmq", "pynvml", "fastapi", "uvicorn", "mlflow", "swanlab", "wandb", "prometheus_client")
# torch's own TensorBoard writer imports the `tensorboard` package: stubbed as a whole without it
TENSORBOARD = "torch.utils.tensorboard"
NEMO_RL_TRANSFORMERS = "5.8.1"   # v0.7.0 pyproject.toml: transformers>=5.8.1,<5.9.0 (its mcore extra)


NEEDED = ("torch", "transformers", "pydantic", "pydantic_core", "nemo_rl")


class _Stub(type):
    """A placeholder class: its attributes are placeholders, subclassing it works, and calling it
    hands back what it decorates (`@ray.remote`, `@ray.remote(num_gpus=1)`) or itself."""

    def __getattr__(cls, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Stub(name, (), {})

    def __call__(cls, *args, **kwargs):
        if len(args) == 1 and not kwargs and callable(args[0]):
            return args[0]
        return cls


class _Placeholder(types.ModuleType):
    """A module whose every attribute is a placeholder class."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        placeholder = _Stub(name, (), {})
        setattr(self, name, placeholder)
        return placeholder


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, names: set[str]):
        self.names = names

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.names:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _Placeholder(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


def _import(stubbed: set[str], stub_missing: bool):
    """Import the loss; with `stub_missing`, stub each missing module the import names and retry."""
    for _ in range(60):
        try:
            from nemo_rl import __version__ as nemo_rl_version
            from nemo_rl.algorithms.loss import prepare_loss_input
            from nemo_rl.algorithms.loss.loss_functions import DPOLossConfig, DPOLossFn
            return nemo_rl_version, prepare_loss_input, DPOLossConfig, DPOLossFn
        except ModuleNotFoundError as exc:
            top = (exc.name or "").split(".")[0]
            if not stub_missing or not top or top in NEEDED or top in stubbed:
                raise
            stubbed.add(top)
            sys.meta_path.append(_StubFinder({top}))
            for name in [m for m in sys.modules if m == "nemo_rl" or m.startswith("nemo_rl.")]:
                del sys.modules[name]  # half-imported: again from the start
    raise ImportError("NeMo RL's loss still does not import after stubbing 60 modules")


def load(src: str | Path, stub_missing: bool = False) -> types.SimpleNamespace:
    src = Path(src).absolute()
    if not (src / "nemo_rl" / "algorithms" / "loss" / "loss_functions.py").is_file():
        raise FileNotFoundError(f"{src} is not a NeMo RL source tree (no nemo_rl/algorithms/loss/loss_functions.py)")
    # transformers' own lazy imports first: they re-create sys.modules["transformers"] on the way
    from transformers import AutoProcessor, AutoTokenizer, PreTrainedTokenizerBase  # noqa: F401
    from transformers.models.auto import tokenization_auto  # noqa: F401

    stubbed = {name for name in STUBBED if importlib.util.find_spec(name) is None}
    if stubbed:
        sys.meta_path.append(_StubFinder(stubbed))
    if importlib.util.find_spec("tensorboard") is None and TENSORBOARD not in sys.modules:
        sys.modules[TENSORBOARD] = _Placeholder(TENSORBOARD)
        stubbed.add(TENSORBOARD)
    sys.path.insert(0, str(src))
    transformers = sys.modules["transformers"]
    version, from_pretrained = transformers.__version__, AutoTokenizer.from_pretrained
    transformers.__version__ = NEMO_RL_TRANSFORMERS
    try:
        nemo_rl_version, prepare_loss_input, DPOLossConfig, DPOLossFn = _import(stubbed, stub_missing)
    finally:
        sys.modules["transformers"].__version__ = version
        AutoTokenizer.from_pretrained = from_pretrained
    return types.SimpleNamespace(DPOLossFn=DPOLossFn, DPOLossConfig=DPOLossConfig,
                                 prepare_loss_input=prepare_loss_input, version=nemo_rl_version,
                                 stubbed=sorted(stubbed), path=str(src))


def dpo_loss(nemo: types.SimpleNamespace, micro_batches: list[dict], settings: dict) -> dict[str, float]:
    """NeMo RL's loss of one global batch given in micro batches, as its DTensor policy worker takes it
    (v0.7.0 dtensor_policy_worker.train): each micro batch's loss normalized by the global batch's
    sequence and token counts, summed over the micro batches. A micro batch: `input_ids` and
    `token_mask` [2B, S] with each pair's chosen and rejected rows next to each other (NeMo RL's DPO
    collation), the policy's `logits` and the reference's `reference_logits` [2B, S, V]. The
    reference log-probs are of those logits, shifted as dpo.py shifts NeMo RL's (torch.roll(logprobs,
    -1)). `settings`: DPOLossConfig's keys."""
    import torch

    loss_fn = nemo.DPOLossFn(nemo.DPOLossConfig(**settings))

    def next_token_logprobs(logits, data):
        """NeMo RL's prepare_loss_input on CUDA; on a CPU what its one-device branch computes
        (model_utils.get_next_token_logprobs_from_logits moves the tokens to CUDA there)."""
        if logits.is_cuda:
            return nemo.prepare_loss_input(logits, data, loss_fn)[0]["next_token_logprobs"]
        logprobs = torch.nn.functional.log_softmax(logits[:, :-1], dim=-1)
        return logprobs.gather(dim=-1, index=data["input_ids"][:, 1:].unsqueeze(-1)).squeeze(-1)

    seqs = sum(int(mb["input_ids"].shape[0]) for mb in micro_batches)
    toks = sum(int(mb["token_mask"][:, 1:].sum()) for mb in micro_batches)
    global_valid_seqs = torch.tensor(float(seqs), device=micro_batches[0]["logits"].device)
    global_valid_toks = torch.tensor(float(toks), device=global_valid_seqs.device)
    totals: dict[str, float] = {}
    for mb in micro_batches:
        data = {"input_ids": mb["input_ids"], "token_mask": mb["token_mask"],
                "sample_mask": torch.ones(mb["input_ids"].shape[0], device=mb["input_ids"].device)}
        ref = next_token_logprobs(mb["reference_logits"], dict(data)).detach()
        data["reference_policy_logprobs"] = torch.cat([ref, torch.zeros_like(ref[:, :1])], dim=1)
        loss, metrics = loss_fn(next_token_logprobs(mb["logits"], data), data, global_valid_seqs=global_valid_seqs,
                                global_valid_toks=global_valid_toks)
        for key in ("preference_loss", "sft_loss", "accuracy"):
            totals[key] = totals.get(key, 0.0) + float(metrics[key])
        totals["loss"] = totals.get("loss", 0.0) + float(loss)
    return totals


def main(argv: list[str]) -> int:
    """python bench/nemo_rl_loss.py SRC BATCHES.pt OUT.json: NeMo RL's loss of each case in BATCHES.pt
    ({name: {"settings": DPOLossConfig keys, "micro_batches": [...]}}), written as JSON."""
    import json

    import torch

    src, batches, out = argv
    nemo = load(src)
    cases = torch.load(batches)
    result = {"nemo_rl": nemo.version, "stubbed": nemo.stubbed,
              "cases": {name: dpo_loss(nemo, case["micro_batches"], case["settings"]) for name, case in cases.items()}}
    Path(out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
