"""Built-in pipelines: table declarations plus pure mapping code."""
