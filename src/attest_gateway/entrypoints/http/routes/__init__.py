"""The routers, one per audience: job centres, health systems, ministry, audit, health checks."""
