"""tiled-stack's entry points inside the Tiled image (serve, init, health)."""
