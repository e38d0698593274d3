"""A history of runs across revisions: the store (SQLite), records -> runs, the backfill over a range of
revisions, change points per series, and the static dashboard that publishes them.

- :mod:`.store`: the database and its schema versions (the only code that speaks SQL);
- :mod:`.ingest`: what each record kind adds (read through the report's metric readers);
- :mod:`.backfill`: a range of revisions timed against an anchor by the same-machine A/B;
- :mod:`.series`: results grouped into series (machine, experiment, cell, metric, what it is relative to);
- :mod:`.changes`: steps in a series, each with its revision range, size, interval and significance;
- :mod:`.publish`: the static site.
"""
