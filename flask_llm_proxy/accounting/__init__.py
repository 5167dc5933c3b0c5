"""Every request accounted for once: the exchange and its record, pricing, the ledger stores, metrics."""
