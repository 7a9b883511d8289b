"""Wire formats, each defined once and imported by every side.

- ``audio``: the PCM format every hop carries (PCM16 LE, mono, 24 kHz).
- ``client``: the browser/phone <-> API Gateway WebSocket protocol (docs/protocol.md).
- ``queue``: the envelope a handler puts on SQS and the worker takes off.
- ``realtime``: the OpenAI Realtime GA events the worker sends and reads.
- ``log_record``: the structured JSON log line every process writes.
"""
