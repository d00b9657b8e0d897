"""The IME protocol, sans I/O: endpoint URLs, the message envelope and the token exchange."""
