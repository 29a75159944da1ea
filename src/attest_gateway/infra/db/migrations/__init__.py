"""Alembic migrations (run programmatically by `attest_gateway.infra.db.migrate`)."""
