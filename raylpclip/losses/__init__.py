"""raylpclip.losses."""
