"""Batch engines over folders: evaluation, screening, export, and what they measure (trust, masking, detection)."""
