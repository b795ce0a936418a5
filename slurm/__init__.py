"""Package data: the sbatch script slurm/dpo.sub (installed as recipe.slurm, see pyproject.toml)."""
