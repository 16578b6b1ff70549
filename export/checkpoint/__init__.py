"""Source checkpoints: loading them (hub or local, layout detected from files), their heads, torch reference rewards."""
