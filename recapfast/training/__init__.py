"""Baseline and robust (Zhao et al. 2018) training."""
