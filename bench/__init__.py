"""bench: measure Monte-Carlo gradient estimators against exact gradients."""
