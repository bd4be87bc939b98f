"""HTTP push source: the seed's ingest API on a minimal httptools server."""
