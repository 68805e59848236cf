"""The webhook worker: delivers the outbox to the shops' receivers (never the milter)."""
