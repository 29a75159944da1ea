"""attest gateway: sealed MedCom-like messaging between job centres and the health sector."""

__version__ = "0.1.0"
