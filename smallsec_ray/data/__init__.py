"""Telemetry shards: the canonical schema, shard IO, validation with quarantine, splits."""
