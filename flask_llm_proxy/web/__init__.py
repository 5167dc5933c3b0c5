"""The web side: the blueprint, the contract endpoint and the native endpoints (all Flask here)."""
