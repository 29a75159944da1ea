"""The `attest-gateway` command and its sub-commands."""
