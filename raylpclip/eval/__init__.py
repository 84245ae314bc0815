"""raylpclip.eval."""
