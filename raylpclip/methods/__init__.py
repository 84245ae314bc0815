"""Methods built on the core (methods.md): pure torch, no Ray; the Ray edges live in raylpclip.runtime."""
