"""The ``trashsorter`` subcommands (argparse wiring in :mod:`trashsorter_cli.main`)."""
