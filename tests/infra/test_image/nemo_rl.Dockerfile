# A CPU stand-in for the NeMo RL image (nvcr.io/nvidia/nemo-rl:v0.7.0), which cannot be pulled here:
# the local Debian base (base_image.sh) plus what the real image holds where our image expects it:
#   - /opt/nemo_rl_venv (NeMo RL's Python env, first on PATH): torch (the CPU wheel), transformers,
#     TRL, ... (the `local` extra of gym-dpo: what the CPU runner needs) and uv;
#   - /opt/nemo-rl/examples/run_dpo.py: the CPU DPO runner in place of NeMo RL's script, same
#     command line (--config FILE [overrides]);
#   - /opt/nemo-rl/examples/configs/dpo.yaml: NeMo RL v0.7.0's own dpo.yaml (the written
#     nemo_rl_dpo.yaml inherits it by this absolute path);
#   - /opt/nemo-rl/nemo_rl/utils/native_checkpoint.py, nemo_rl/models/automodel/checkpoint.py:
#     NeMo RL v0.7.0's own, which our Dockerfile's build step patches (the tokenizer saved by rank 0).
# Packages come from wheels/ only (test_image.sh fills it on the host, where the CPU torch wheel
# is; pip in a build would fetch the CUDA build from PyPI). This image does not depend on
# gym-dpo's sources, so Docker's cache keeps it until the requirements change.
ARG BASE_IMAGE=gym-dpo-base:bookworm
FROM ${BASE_IMAGE}

COPY wheels /tmp/wheels
COPY requirements.txt /tmp/requirements.txt
RUN /opt/nemo_rl_venv/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheels \
        -r /tmp/requirements.txt \
 && rm -rf /tmp/wheels /tmp/requirements.txt \
 && python -c "import torch, trl, transformers; print('torch', torch.__version__)" \
 && uv --version

COPY run_dpo.py /opt/nemo-rl/examples/run_dpo.py
COPY dpo.yaml /opt/nemo-rl/examples/configs/dpo.yaml
COPY native_checkpoint.py /opt/nemo-rl/nemo_rl/utils/native_checkpoint.py
COPY checkpoint.py /opt/nemo-rl/nemo_rl/models/automodel/checkpoint.py
LABEL org.opencontainers.image.title="nemo-rl CPU stand-in (tests/infra/test_image.sh)"
