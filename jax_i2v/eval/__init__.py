"""Evaluation: visual-consistency and motion metrics for the synthetic image-to-video benchmark."""
