"""Command-line tools: the local multi-process launcher and the fault report."""
