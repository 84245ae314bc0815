"""Sharding strategies beside `raylpclip.distributed` (the other owner of `torch.distributed`): FSDP2 for the
towers (fsdp_sharding.py) and its sharded checkpoints (sharded_checkpoint.py)."""
