"""Evaluation of generated images: a CNN classifier (MNIST's, or one trained on a model's own data
and paired to it, :mod:`ddpm_core.evaluation.pairing`), its features and FID."""
