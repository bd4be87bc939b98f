"""Anomaly detection: threshold rules and de-duplicated alert events."""
