"""Ray sessions and cluster-wide helpers: starting or joining Ray, the run's counters, Ray Data's scheduler pacing."""
