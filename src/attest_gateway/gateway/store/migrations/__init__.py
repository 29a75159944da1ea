"""Alembic migrations (run programmatically by `attest_gateway.gateway.store.migrate`)."""
