"""HTTP + WebSocket serving of psn_runtime (FastAPI). Translation only: no model logic lives here."""
