"""Training: optimisers, train state, jitted steps, checkpoints and the two-stage loop."""
