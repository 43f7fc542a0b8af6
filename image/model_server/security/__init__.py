"""Security, small and in one place: TLS contexts reloaded from their files (tls.py), who a caller is and what
it may do (identity.py), and the one check every entry point runs before any handler (guard.py)."""
