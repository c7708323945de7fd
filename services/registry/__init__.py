"""The registry: system of record for data sets, model specs, model versions, runs, evaluations, aliases, lineage."""
