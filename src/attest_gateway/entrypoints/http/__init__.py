"""The HTTP API: app, authentication, mutual TLS, problem+json, OpenAPI and AsyncAPI documents."""
