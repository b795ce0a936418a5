# The image our Dockerfile built (FROM_IMAGE), with one test-only touch:
#   - no ENTRYPOINT: the NeMo RL image runs the command it is given (NVIDIA's entrypoint execs its
#     arguments), which the Docker SDK launcher relies on when it starts `container.image`; our
#     Dockerfile's ENTRYPOINT ["gym-dpo"] would turn that command into gym-dpo arguments.
#     compose.yaml names its own entrypoint, so `docker compose run` is unaffected.
ARG FROM_IMAGE=gym-dpo-test:dockerfile
FROM ${FROM_IMAGE}
# our Dockerfile lets gym-dpo's venv see NeMo RL's packages: the CPU runner imports from there
RUN /opt/gym-dpo/bin/python -c "import torch, trl, recipe.train.local_dpo"
ENTRYPOINT []
