"""The paper's study, end to end: synthesize, split, train and evaluate per image size, and the report."""
