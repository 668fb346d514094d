"""Delivering a bundle: predict and serve (issue 12)."""
