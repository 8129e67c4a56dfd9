"""``deltatune ui``: a local web UI (FastAPI + plain HTML/JS, no assets from the internet)."""
