"""The bridge worker: one Realtime model session per call, fed from SQS, answering through
API Gateway's ``@connections`` API. ``core`` holds all behaviour and does no I/O; the other
modules are transports around it."""
