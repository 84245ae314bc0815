"""raylpclip.models."""
