"""Datasets and input pipelines: the synthetic moving-shapes dataset (TFDS, array_record) read through Grain."""
