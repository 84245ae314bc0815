"""Ray Train: a driver and a worker function for each trainer (pretrain, finetune, probe)."""
