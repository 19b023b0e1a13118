"""LCH pipelines: Ray Jobs, Ray Data and Ray Train around the core functions in `lch`."""
