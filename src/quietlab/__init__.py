"""quietlab: see what a transformer learns while its loss curve is flat."""

__version__ = "0.1.0"
