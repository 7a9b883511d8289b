"""The ``voice-agent`` command: the local stack, a command-line caller, and (later) tokens,
benchmarks and cost estimates."""
