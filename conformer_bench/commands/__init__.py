"""CLI commands, one module each: parse options, call the core, write results."""
