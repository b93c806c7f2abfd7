"""Registry: the champion alias and its history, promotion decisions."""
