"""The fault suite: private redis-server processes killed, paused and flushed, SQLite files that
fail on write, clients that never read. Never the shared Redis."""
