"""Test bed for integration tests: real daemons started idempotently, everything cleaned up."""
