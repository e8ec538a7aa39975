"""Runners: the command line and everything with side effects."""
