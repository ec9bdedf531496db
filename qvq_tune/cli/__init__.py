"""The `qvq-tune` command: one module per sub-command, each parsing args and calling a library function."""
