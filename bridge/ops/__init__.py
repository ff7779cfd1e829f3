"""Operations: what the bridge tells its operator (metrics)."""
