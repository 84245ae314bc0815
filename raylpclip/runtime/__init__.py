"""raylpclip.runtime."""
