"""Batch column names: the one place that names them.

Ray Data pipelines produce these columns, the train loop and the models consume them.
"""

IMAGE = "image"  # uint8 (B, 3, H, W); normalised to float on the worker, next to the model
INPUT_IDS = "input_ids"  # int64 (B, L)
ATTENTION_MASK = "attention_mask"  # int64 (B, L), 1 for real tokens
LABEL = "label"  # int64 (B,), -1 when the sample carries no class label
IMAGE_ID = "image_id"  # int64 (B,), same for rows that share an image (several captions): retrieval groups
KEY = "key"  # str, the img2dataset sample key
POSITION = "__position__"  # reserved name (shards may carry a `position` metadata field); int64 (B,), (shard ordinal << 32) | row in shard: what a resumed run skips

TENSOR_COLUMNS = (IMAGE, INPUT_IDS, ATTENTION_MASK, LABEL, IMAGE_ID)

# Batch inference's output columns (runtime/data/batch_inference.py), per view name (clean, weak, ...):
FEATURE_PREFIX = "feat_"  # float32 (N, D) unit-norm image features of the view
LOGITS_PREFIX = "logits_"  # float32 (N, H, C): each head's logits on the view
TEXT_FEATURES = "text_feat"  # float32 (N, D) caption features (retrieval test sets)
