"""Sealing and opening envelopes (HPKE), signatures, key files and the key ring."""
