"""Subcommands of the `stagefleet` CLI, one module each."""
