"""Ways to run one fold job: a GPU slot, torchrun, a Ray task, a Slurm array task. make decides what runs."""
