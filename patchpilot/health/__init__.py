"""Health gates: checks run on hosts, baselines, the judge and the verdict policy."""
