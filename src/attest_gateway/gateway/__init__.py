"""The gateway core: composition root, configuration, bus, crypto, directory and store."""
