"""raylpclip.engine."""
