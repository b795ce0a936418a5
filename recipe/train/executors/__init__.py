"""Ways to run an argv: here as a child process, in a fresh container through the Docker SDK, or
as a Slurm job (sbatch: submitted, then followed).

Launch profiles (recipe.train.launchers) decide *what* runs; these modules decide *where*. Both
stream the output to the terminal and to a log file in the run folder and return the exit code.
"""
