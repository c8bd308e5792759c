"""Command-line subcommands, one module per group; polyplan.cli assembles them."""
