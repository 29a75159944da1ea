"""The ports the use cases work through (`store`: the store's units of work and repositories,
the directory, the relay), the records they carry (`records`), and sealing a message for its
receiver through the directory port (`sealing`). Implemented in infra/db; faked in
tests/support/fakes.py."""
