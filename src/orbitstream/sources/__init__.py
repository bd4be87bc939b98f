"""Sources: HTTP push (and later Kafka, Starlink)."""
