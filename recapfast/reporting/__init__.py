"""Renderings: the paper's tables, plots, trust sections, the bundled-model numbers, the reproduction."""
