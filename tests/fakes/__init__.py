"""Test doubles that speak real protocols.

``tests.fakes.chat_server``: a scripted OpenAI-compatible chat-completions
server on loopback (also runnable as ``python -m tests.fakes.chat_server``).
"""
