"""The client side of a stream: the contract's events, the relay that numbers and writes them, and the native passthrough."""
