"""End-to-end tests: the real ``flowrunner`` CLI in subprocesses on a real SQLite file."""
