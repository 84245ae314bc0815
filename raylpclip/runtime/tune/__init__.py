"""Ray Tune and multi-run experiments: sweeps and data-scaling runs."""
