"""The database: tables, engine, group commit, migrations, and the queries of each capability."""
