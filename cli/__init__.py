"""What every command line of the project shares (``options``): argparse lives here, not in the library."""
