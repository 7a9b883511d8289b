"""Local stand-ins that speak the real protocols, so the production code runs unchanged.

One module per protocol; each is a pure protocol core with a thin WebSocket/HTTP layer
around it (see ../shared/STYLE.md), and can be run on its own with ``python -m``.
For example ``realtime`` is the OpenAI Realtime GA API with an echo "model".
"""
