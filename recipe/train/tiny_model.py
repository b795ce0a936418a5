"""The default policy `gym-dpo/tiny`: a few-layer causal LM built on this machine, never downloaded.

A laptop, CI or a login node has no GPU and no hub access, yet the whole recipe must run end to
end. So the default model is made here: a byte-level BPE tokenizer trained with `tokenizers` on
the text of the train pairs (with a ChatML chat template, so the pairs' messages render the way
an instruct model's would), and a small Llama from a `transformers` config with seeded random
weights. It is a normal Hugging Face folder: everything that loads a model by path loads it.

Building takes about a second, but needs torch; the result is cached under
`$GYM_DPO_CACHE` (default `~/.cache/gym-dpo`) by a hash of the texts and of this recipe, and each
run gets its own copy in its run folder, so the run folder alone says what was trained and a
container that mounts the run folder sees the model too.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from recipe.errors import RecipeError

TINY_NAME = "gym-dpo/tiny"
RUN_FOLDER_NAME = "tiny_model"  # the run's copy: <run_dir>/tiny_model

# Part of the cache key: change any of these and a new model is built.
RECIPE_VERSION = 1
VOCAB_SIZE = 2048
ARCHITECTURE = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": True,
}
SEED = 0

PAD, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"

# ChatML. The prompt rendered with add_generation_prompt is an exact prefix of prompt+answer, so
# DPO trainers find where the answer starts. Assistant tool calls render as <tool_call> lines,
# their arguments with `tojson` as the Hugging Face templates of Qwen2.5 and Llama 3.x do.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "<|im_start|>{{ message['role'] }}\n"
    "{%- if message['content'] %}{{ '\n' + message['content'] }}{% endif -%}"
    "{%- for call in message.get('tool_calls') or [] -%}"
    "{{ '\n<tool_call>{\"name\": \"' + call['function']['name'] + '\", \"arguments\": '"
    " + call['function']['arguments'] | tojson + '}</tool_call>' }}"
    "{%- endfor -%}"
    "{{ '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif -%}"
)


def cache_root() -> Path:
    return Path(os.environ.get("GYM_DPO_CACHE", Path.home() / ".cache" / "gym-dpo")).expanduser()


def resolve_model_name(name: str, run_dir: Path, train_file: Path | None = None) -> str:
    """`gym-dpo/tiny` -> a local model folder inside `run_dir` (built or cached); any other name as is.

    The tokenizer is trained on the train pairs, `train_file` (default `<run_dir>/data/train.jsonl`,
    where prepare writes them).
    """
    if name != TINY_NAME:
        return name
    train_file = Path(train_file) if train_file is not None else Path(run_dir) / "data" / "train.jsonl"
    if not train_file.is_file():
        raise RecipeError(f"policy.model_name={TINY_NAME} trains its tokenizer on the train pairs, and "
                          f"{train_file} does not exist: run stage=prepare first (or stage=all)")
    cached = build(pair_texts(train_file))
    target = Path(run_dir).absolute() / RUN_FOLDER_NAME
    if not _same_build(cached, target):
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(cached, target)
    return str(target)


def _same_build(a: Path, b: Path) -> bool:
    try:
        return (a / "gym_dpo_tiny.json").read_bytes() == (b / "gym_dpo_tiny.json").read_bytes()
    except OSError:
        return False


# -- the text a tokenizer learns from ------------------------------------------------------------
def _message_texts(messages) -> Iterator[str]:
    for message in messages or []:
        if isinstance(message, str):
            yield message
            continue
        if message.get("content"):
            yield message["content"]
        for call in message.get("tool_calls") or []:
            function = call.get("function", {})
            arguments = function.get("arguments", "")
            yield f"{function.get('name', '')} {arguments if isinstance(arguments, str) else json.dumps(arguments)}"


def pair_texts(train_file: Path) -> list[str]:
    """Every message text of every pair (PreferenceDataset or BinaryPreferenceDataset records)."""
    texts: list[str] = []
    with open(train_file, encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            record = json.loads(line)
            if "completions" in record:
                texts.extend(_message_texts(record.get("context")))
                for completion in record["completions"]:
                    texts.extend(_message_texts(completion.get("completion")))
            else:
                prompt = record.get("prompt")
                texts.extend([prompt] if isinstance(prompt, str) else _message_texts(prompt))
                texts.extend(t for t in (record.get("chosen"), record.get("rejected")) if isinstance(t, str))
    if not texts:
        raise RecipeError(f"{train_file} holds no pair text to train the tiny model's tokenizer on")
    return texts


# -- building ------------------------------------------------------------------------------------
def build_key(texts: Iterable[str]) -> str:
    digest = hashlib.sha256(json.dumps({"recipe": RECIPE_VERSION, "vocab": VOCAB_SIZE, "arch": ARCHITECTURE,
                                        "template": CHAT_TEMPLATE, "seed": SEED},
                                       sort_keys=True).encode())
    for text in texts:
        digest.update(hashlib.sha256(text.encode("utf-8")).digest())
    return digest.hexdigest()[:24]


def build(texts: list[str], root: Path | None = None) -> Path:
    """The cached model folder for these texts, built first if absent."""
    key = build_key(texts)
    folder = (root or cache_root()) / "tiny" / key
    if (folder / "gym_dpo_tiny.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=folder.parent))
    try:
        _write_model(texts, temp)
        (temp / "gym_dpo_tiny.json").write_text(json.dumps(
            {"name": TINY_NAME, "key": key, "recipe": RECIPE_VERSION, "architecture": ARCHITECTURE,
             "vocab_size": VOCAB_SIZE, "trained_on_texts": len(texts)}, indent=2) + "\n")
        for path in [temp, *temp.iterdir()]:  # mkdtemp and safetensors make owner-only files
            path.chmod(0o755 if path.is_dir() else 0o644)
        try:
            os.rename(temp, folder)
        except OSError:  # another process built the same key first: theirs is as good
            if not (folder / "gym_dpo_tiny.json").is_file():
                raise
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return folder


def _write_model(texts: list[str], folder: Path) -> None:
    try:
        import torch
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast
        from transformers.utils import logging as hf_logging
    except ImportError as exc:
        raise RecipeError(f"building {TINY_NAME} needs the local extra ({exc.name} is missing): "
                          "pip install -e '.[local]'") from None
    hf_logging.disable_progress_bar()  # a one-shard save needs no bar
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, min_frequency=2, show_progress=False,
        special_tokens=[PAD, IM_START, IM_END], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=IM_END, pad_token=PAD,
                                        model_max_length=ARCHITECTURE["max_position_embeddings"])
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)

    architecture = dict(ARCHITECTURE)
    config = AutoConfig.for_model(architecture.pop("model_type"), vocab_size=len(tokenizer),
                                  bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                                  pad_token_id=tokenizer.pad_token_id, **architecture)
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
