"""raylpclip.data."""
