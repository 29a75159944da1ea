"""Persistence: organisations and keys, conversations, outbox, mailboxes, dedupe, stages.

SQLite (aiosqlite) by default, PostgreSQL (asyncpg) in production, through SQLAlchemy 2
Core and Alembic migrations. No table holds health data in clear: message bodies are
stored only as sealed envelopes; citizens appear only as case refs (keyed pseudonyms).
"""
