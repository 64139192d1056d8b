"""Several replicas on one PostgreSQL: who leads the periodic work, and who is alive."""
