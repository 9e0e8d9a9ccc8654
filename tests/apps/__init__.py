"""Workflow modules the fault tests run in worker subprocesses."""
