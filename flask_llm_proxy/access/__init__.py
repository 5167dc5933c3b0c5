"""Who may ask, and how much: JWT identity, rate limits and token quotas, CORS."""
