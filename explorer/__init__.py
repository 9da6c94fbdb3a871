"""explorer: latency-accuracy design-space exploration for vision-language models."""

__version__ = "0.1.0"
