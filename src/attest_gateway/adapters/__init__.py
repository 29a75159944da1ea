"""Adapters between the gateway and the outside world (job centres, MedCom)."""
