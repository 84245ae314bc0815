"""Ray-free planning and reports of multi-run experiments: sweep spaces and results, scaling plans and reports, demo data."""
