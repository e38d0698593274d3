"""``conformer-bench search``: the accuracy-throughput Pareto front of Conformer variants, found by Optuna.

- :mod:`.metrics`: what a trial can be judged on (costs in closed form, the profile's and fine-tune's records);
- :mod:`.spec`: the ``[search]`` table of an experiment file (space, objectives, constraints, budget);
- :mod:`.study`: the Optuna study in its journal file, and where each of its trials stands;
- :mod:`.run`: the ask-run-tell loop; trials run as ablate cells, through ablate's executors;
- :mod:`.front`: the front, the base it is compared with, its records, tables, figure and experiment file.
"""
