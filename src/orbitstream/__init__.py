"""OrbitStream: telemetry ingestion engine."""
