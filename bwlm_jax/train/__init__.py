"""Training: train state, optimiser, pure jitted steps, batch feeders, metric writers and the stage loop."""
