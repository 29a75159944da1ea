"""The webhook sender's HTTP client (client.py)."""
