"""Built-in live dashboard of OrbitStream: static page assets shipped inside the package."""
