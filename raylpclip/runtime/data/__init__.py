"""Ray Data pipelines: shard readers, the decode actor pool, the Train workers' batch stream, batch inference, shard writing."""
