"""Scaling sweeps: sweep points, the results file, power-law fits, plots, TPU ahead-of-time compiles."""
