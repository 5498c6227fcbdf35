"""bcmcore: iCT, Bidirectional Consistency Models and invertible Guided Consistency Training."""

__version__ = "0.1.0"
