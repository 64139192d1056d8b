"""The sandbox subdomains: browser authentication and the streaming reverse proxy."""
