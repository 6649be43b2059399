"""Evaluation of generated MNIST digits: a CNN classifier, its features and FID."""
