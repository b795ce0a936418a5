# gym-dpo on top of the NeMo RL container: the CLI in its own venv, NeMo RL at /opt/nemo-rl (its
# Python env stays /opt/nemo_rl_venv; our pins never change NeMo RL's packages) with one fix NeMo
# RL made after v0.7.0: each checkpoint's tokenizer is saved by rank 0 only (NVIDIA-NeMo/RL #3504;
# every rank writing the same files can hang a job on NFS): docker/nemo_rl_tokenizer_rank0.py,
# which fails the build unless it finds v0.7.0's code as it replaces it.
# gym-dpo's venv also sees NeMo RL's packages, after its own (a .pth file, when both use the same
# Python): preflight tokenizes with NeMo RL's transformers, and the CPU runner finds torch there.
#
#   docker compose build recipe                       # FROM the pinned image below
#   docker build --build-arg BASE_IMAGE=gym-dpo-base:bookworm -t gym-dpo:test .   # tests: a local base
#
# BASE_IMAGE is pinned by tag AND digest. The digest below is a placeholder until
# `gym-dpo stage=lock_image` (after `docker pull nvcr.io/nvidia/nemo-rl:v0.7.0`) writes the
# digest of the image you pulled here and into container.lock.json; until then a build without
# --build-arg BASE_IMAGE fails on the invalid reference, on purpose.
ARG BASE_IMAGE=nvcr.io/nvidia/nemo-rl:v0.7.0@sha256:REPLACE_WITH_DIGEST__run_gym-dpo_stage=lock_image
FROM ${BASE_IMAGE}

ARG BASE_IMAGE
ARG GYM_DPO_VERSION=0.1.0
ARG PYTHON=python3
ARG NEMO_RL_DIR=/opt/nemo-rl
LABEL org.opencontainers.image.title="gym-dpo" \
      org.opencontainers.image.description="NeMo Gym rollouts -> DPO pairs -> NeMo RL DPO" \
      org.opencontainers.image.version="${GYM_DPO_VERSION}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"
# The launch checks this digest against container.lock.json (recipe/train/container.py).
ENV GYM_DPO_BASE_IMAGE=${BASE_IMAGE} \
    HF_HOME=/root/.cache/huggingface \
    PYTHONUNBUFFERED=1

COPY . /src/gym-dpo
RUN ${PYTHON} -m venv /opt/gym-dpo \
 && /opt/gym-dpo/bin/pip install --no-cache-dir "/src/gym-dpo[docker]" \
 && site=$(/opt/gym-dpo/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))') \
 && nemo_site=/opt/nemo_rl_venv/lib/$(basename "$(dirname "$site")")/site-packages \
 && if [ -d "$nemo_site" ]; then echo "$nemo_site" > "$site/nemo_rl_venv.pth"; fi \
 && ${PYTHON} /src/gym-dpo/docker/nemo_rl_tokenizer_rank0.py "${NEMO_RL_DIR}" \
 && ln -s /opt/gym-dpo/bin/gym-dpo /usr/local/bin/gym-dpo \
 && mkdir -p /workspace/results \
 && if [ -f /src/gym-dpo/container.lock.json ]; then cp /src/gym-dpo/container.lock.json /workspace/; fi \
 && rm -rf /src/gym-dpo \
 && gym-dpo --help >/dev/null

# NeMo Gym for stage=iterate, installed from the repository's lock for the image's Python (NeMo RL
# v0.7.0's is 3.13.13: recipe/iterate/locks/nemo-gym-0.4.0-py3.13.txt) into a folder of the image.
# At run time setup uses it where it was built (GYM_DPO_NEMO_GYM_PREBUILT) and builds the server
# venvs into the mounted cache, from the same lock. NEMO_GYM=skip leaves it out (an image without
# Python >= 3.12, such as the tests' stand-in; stage=iterate then installs it into the cache).
ARG NEMO_GYM=lock
ENV GYM_DPO_NEMO_GYM_PREBUILT=/opt/gym-dpo-tools/iterate
RUN if [ "$NEMO_GYM" != skip ]; then \
        GYM_DPO_CACHE=/opt/gym-dpo-tools PIP_NO_CACHE_DIR=1 /opt/gym-dpo/bin/python -m recipe.iterate.setup \
            --only nemo-gym-venv \
     && rm -rf /opt/gym-dpo-tools/iterate/uv-cache-* /opt/gym-dpo-tools/iterate/logs; \
    fi

# results/ (a mount) holds the run folders; container.lock.json sits beside it.
WORKDIR /workspace
ENTRYPOINT ["gym-dpo"]
