"""`python -m recipe.iterate.base_model MODEL.gguf OUT`: a GGUF model as a plain Hugging Face folder.

transformers reads a GGUF file (with the `gguf` package) and dequantizes it to float32, but a
model loaded that way refuses `save_pretrained` (it carries a GGUF quantization config). So the
weights go into a model built from the same config without it, and that one is saved, with the
tokenizer and chat template the GGUF file holds. Run in a child process by recipe.iterate.setup.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def convert(gguf: Path, out: Path) -> Path:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    settings = loaded.config.to_dict()
    settings.pop("quantization_config", None)
    plain = AutoModelForCausalLM.from_config(type(loaded.config).from_dict(settings))
    plain.load_state_dict(loaded.state_dict(), strict=True)
    temp = out.with_name(out.name + ".partial")
    plain.save_pretrained(temp)
    tokenizer.save_pretrained(temp)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    temp.rename(out)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m recipe.iterate.base_model MODEL.gguf OUT_FOLDER")
    print(convert(Path(sys.argv[1]), Path(sys.argv[2])))
