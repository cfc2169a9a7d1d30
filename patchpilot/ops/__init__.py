"""What touches hosts: the executor (the only user of ansible-runner), the operations the run
performs through it (fleetops), and the warm start of a run's patch process."""
