"""Fault-injection tools and drills used by the tests; the product keeps only the worker trace hook they read."""
