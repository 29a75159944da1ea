"""Where requests come in: the HTTP API and the `attest-gateway` command."""
