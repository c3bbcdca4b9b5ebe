"""Detectors: Yang's LaplacianCNN, more architectures, the folded fast path, and loading any model."""
