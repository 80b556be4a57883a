"""Runs that always end, and commands that agree: background processes, the local tracking server, the lock and heartbeat, the journal and reconciler."""
