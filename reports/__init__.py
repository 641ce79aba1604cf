"""Entry points that combine papers: the artifact dispatcher (`python -m reports.experiment`), the toy and
mini reports, the FLOPs tables and the benchmark suite. `common` is the library below them; `papers` the
layer in between. Nothing imports `reports`."""
