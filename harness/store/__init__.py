"""The DuckDB file: schema and migrations, journaled batched writes, reads and named queries."""
