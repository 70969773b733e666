"""The search: its request and setup, the space, samplers and pruning, the time plan, the objective,
the driver and the workers."""
