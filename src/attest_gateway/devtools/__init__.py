"""For development and demonstration: the traffic simulator, demo organisations, a
development CA."""
