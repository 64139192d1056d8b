"""The Anthropic API proxy: sandboxes call Claude with a token of their own; we add the key."""
