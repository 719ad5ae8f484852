"""Experiment recipes: the only modules besides cli.py that use every part (task, model, train, monitor, report)."""
