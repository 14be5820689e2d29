"""The ``bbp-resume`` command line (argument parsing, output, exit codes)."""
