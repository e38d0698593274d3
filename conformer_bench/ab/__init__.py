"""Two revisions of the project timed side by side on one machine (``conformer-bench ab``).

``session`` runs one A/B from revision names to a record; ``run`` times the cells in paired rounds;
``workers`` starts and talks to the measuring processes (``worker.py``, which stands alone); ``stats`` and
``compare`` turn the rounds into a verdict; ``render`` writes it; ``inject`` builds throwaway repositories
with known changes, to prove the gate.
"""

# The choices the command offers; the names light enough to import for --help.
SCHEDULES: tuple[str, ...] = ("same-core", "split-cores", "duet")
CLOCKS: tuple[str, ...] = ("auto", "cpu", "wall")
