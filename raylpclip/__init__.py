"""raylpclip."""
