"""Running the service: building it from settings, TLS for fal's https-only Python client, uvicorn."""
