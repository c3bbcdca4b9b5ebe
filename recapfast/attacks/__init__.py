"""Adversarial attacks in pixel units: single-step sweep, iterative, APGD/Square, universal, localization, transfer."""
