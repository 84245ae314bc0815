"""CLI subcommands that take their own arguments (not a config file)."""
