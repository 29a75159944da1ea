"""The domain, pure: attests, identifiers, bounds, errors, the directory model, the clock and the
ports.
"""
