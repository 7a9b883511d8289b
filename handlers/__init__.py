"""The API Gateway WebSocket route handlers: one Lambda function per module.

``connect`` ($connect), ``default`` ($default), ``disconnect`` ($disconnect). Each does one
thing and is importable without AWS: clients are created once at module scope from the
environment, which is also how the local stack points them at moto.
"""
