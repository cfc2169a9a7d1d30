"""The store: SQLModel tables, the engine and session factory, migrations and queries."""
