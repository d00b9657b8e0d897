"""Live fan-out of the recording: the hub process (relay + NATS publisher) and what it speaks with workers."""
