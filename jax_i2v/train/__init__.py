"""Pretraining: optimizer, sharded train state and the jitted train step."""
