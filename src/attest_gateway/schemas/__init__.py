"""The shared language: pydantic models and pure validation, no I/O."""
