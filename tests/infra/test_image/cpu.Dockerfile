# The image our Dockerfile built (FROM_IMAGE), with two test-only touches:
#   - gym-dpo's venv (/opt/gym-dpo) also sees NeMo RL's venv packages (torch, TRL, ...: a .pth
#     file), so `launcher=local_cpu` (the CPU runner started by gym-dpo's own Python) runs in it;
#   - no ENTRYPOINT: the NeMo RL image runs the command it is given (NVIDIA's entrypoint execs its
#     arguments), which the Docker SDK launcher relies on when it starts `container.image`; our
#     Dockerfile's ENTRYPOINT ["gym-dpo"] would turn that command into gym-dpo arguments.
#     compose.yaml names its own entrypoint, so `docker compose run` is unaffected.
ARG FROM_IMAGE=gym-dpo-test:dockerfile
FROM ${FROM_IMAGE}
RUN for site in /opt/nemo_rl_venv/lib/python3*/site-packages; do \
        echo "$site" > "$(echo /opt/gym-dpo/lib/python3*/site-packages)/nemo_rl_venv.pth"; done \
 && /opt/gym-dpo/bin/python -c "import torch, trl, recipe.train.local_dpo"
ENTRYPOINT []
