"""fedlora control plane (FastAPI). Nothing under api/ imports torch."""
