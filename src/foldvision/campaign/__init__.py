"""Ways to run one fold job, each a recipe prefix or a stage option: a GPU slot, torchrun, a Ray task, a Slurm job.
make alone decides what runs (which folds are stale) and how many at once (-j)."""
