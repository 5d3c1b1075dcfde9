"""tokenergy node agent: GPU energy joined with inference-server token counters."""

__version__ = "0.1.0"
