#!/bin/bash

# Parameters
#SBATCH --cpus-per-task=1
#SBATCH --error=/work/wt-search/results/search_micro/slurm/trials/jobs/%j_0_log.err
#SBATCH --job-name=conformer-bench:search_micro-search
#SBATCH --nodes=1
#SBATCH --open-mode=append
#SBATCH --output=/work/wt-search/results/search_micro/slurm/trials/jobs/%j_0_log.out
#SBATCH --signal=USR2@90
#SBATCH --time=20
#SBATCH --wckey=submitit

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output /work/wt-search/results/search_micro/slurm/trials/jobs/%j_%t_log.out --error /work/wt-search/results/search_micro/slurm/trials/jobs/%j_%t_log.err /work/wt-search/.venv/bin/python -u -m submitit.core._submit /work/wt-search/results/search_micro/slurm/trials/jobs
