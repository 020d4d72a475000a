"""``bench train``: learning curves per estimator (docs/training.md)."""
