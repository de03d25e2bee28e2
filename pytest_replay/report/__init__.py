"""Layer 7: what a run did, as data, rendered several times. aggregate.py keeps mergeable per-endpoint
statistics (HDR histograms, counters); run.py holds RunResults (what a process did; crosses from
xdist workers to the controller) and RunReport (rendered to the terminal); evidence.py writes the
evidence package; merge.py merges shards. Imports http, policy and verdicts."""
